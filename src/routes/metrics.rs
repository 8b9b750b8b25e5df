//! `GET /metrics` (Prometheus text format) and `GET /openapi.json`: what the service says
//! about itself.

use crate::app::App;
use crate::http::{Body, Reply};
use crate::metrics::Gauges;

/// `GET /metrics`: the counters, and the gauges read now.
pub fn metrics(app: &App) -> Reply {
    let gauges = Gauges {
        connections_open: app.connections.open() as u64,
        connections_refused: app.connections.refused(),
        audit_backlog_rows: app.journal.backlog(),
        audit_rows_written: app.journal.written(),
        db_up: app.health.is_up(),
        state_reloads: app.state.reloads(),
        models: &app.state.models,
    };
    Reply {
        status: 200,
        headers: Vec::new(),
        body: Body::Bytes {
            data: app.metrics.render(&gauges).into_bytes(),
            content_type: "text/plain; version=0.0.4; charset=utf-8",
        },
    }
}

/// `GET /openapi.json`: `docs/openapi.json`, the same bytes.
pub fn openapi() -> Reply {
    Reply::raw_json(200, crate::openapi::DOCUMENT.to_vec())
}
