//! switcher-api: an OpenAI-compatible endpoint whose provider account and model are switched
//! by hand, per agent.

pub mod log;

pub mod anthropic;
pub mod anthropic_inbound;
pub mod anthropic_passthrough;
pub mod anthropic_stream;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod input;
pub mod journal;
pub mod metrics;
pub mod migrate;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod signals;
pub mod sse;
pub mod startup;
pub mod state;
pub mod store;
pub mod upstream;
pub mod usage;
pub mod wizard;
