//! switcher-api: an OpenAI-compatible endpoint whose provider account and model are switched
//! by hand, per agent.

pub mod log;

mod anthropic;
mod anthropic_inbound;
mod anthropic_passthrough;
mod anthropic_stream;
pub mod app;
pub mod audit;
mod auth;
pub mod config;
pub mod crypto;
pub mod db;
mod error;
mod http;
mod input;
pub mod journal;
mod migrate;
mod responses;
mod responses_stream;
mod routes;
mod server;
pub mod signals;
mod sse;
pub mod startup;
mod state;
mod store;
mod upstream;
mod usage;
pub mod wizard;
