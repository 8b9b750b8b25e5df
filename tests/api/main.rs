//! Integration tests: the real server binary against a real Postgres, with fake upstreams.

mod support;

mod connections;
mod control_plane;
mod data_plane;
mod lifecycle;
mod messages;
mod observability;
mod operator;
mod proxy;
mod responses;
mod streaming;
mod tls;
mod upstream_tls;
mod wizard;
