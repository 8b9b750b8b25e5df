//! switcher-api: an OpenAI-compatible endpoint whose provider account and model are switched
//! by hand, per agent.

pub mod log;

// The pure translators and the SSE parser are public for the property tests (tests/properties.rs).
pub mod anthropic;
pub mod anthropic_inbound;
mod anthropic_passthrough;
pub mod anthropic_stream;
pub mod app;
pub mod audit;
mod auth;
pub mod config;
pub mod crypto;
pub mod db;
mod error;
mod gate;
mod http;
mod input;
pub mod journal;
mod metrics;
mod migrate;
mod openapi;
mod provider;
mod responses;
mod responses_stream;
mod routes;
mod server;
pub mod signals;
pub mod sse;
pub mod startup;
mod state;
mod store;
mod upstream;
mod usage;
pub mod wizard;
