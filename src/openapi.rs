//! The OpenAPI 3.1 document of the service (`docs/openapi.json`), embedded byte for byte and
//! served at `GET /openapi.json`; its paths are also the route templates `/metrics` counts by.

use std::sync::OnceLock;

use crate::http::decode_segment;

/// `docs/openapi.json`, as it is in the repository.
pub const DOCUMENT: &[u8] = include_bytes!("../docs/openapi.json");

/// Every path template of the document (`/admin/profiles/{id}`), in its order.
pub fn templates() -> Vec<&'static str> {
    static TEMPLATES: OnceLock<Vec<&'static str>> = OnceLock::new();
    TEMPLATES
        .get_or_init(|| {
            let doc: serde_json::Value =
                serde_json::from_slice(DOCUMENT).expect("docs/openapi.json is valid JSON");
            doc["paths"]
                .as_object()
                .expect("docs/openapi.json has paths")
                .keys()
                .map(|k| &*Box::leak(k.clone().into_boxed_str()))
                .collect()
        })
        .clone()
}

/// The template a raw (percent-encoded) request path falls under, cut into segments and
/// decoded the way the router does it: `{name}` takes any one non-empty segment.
pub fn match_template(templates: &[&str], raw_path: &str) -> Option<usize> {
    let trimmed = if raw_path.len() > 1 {
        raw_path.strip_suffix('/').unwrap_or(raw_path)
    } else {
        raw_path
    };
    let segments: Vec<_> = trimmed.split('/').skip(1).map(decode_segment).collect();
    templates.iter().position(|template| {
        let mut parts = template.split('/').skip(1);
        let mut segments = segments.iter();
        loop {
            match (parts.next(), segments.next()) {
                (None, None) => return true,
                (Some(part), Some(segment)) => {
                    let fits = if part.starts_with('{') && part.ends_with('}') {
                        !segment.is_empty()
                    } else {
                        part == segment
                    };
                    if !fits {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    fn document() -> Value {
        serde_json::from_slice(DOCUMENT).unwrap()
    }

    /// Every (method, template) the router matches on, read from its source: each arm of
    /// `resolve` that names a method, its path segments written back as a template with
    /// `{id}` for a bound segment.
    fn routed() -> Vec<(String, String)> {
        let source = include_str!("routes/mod.rs");
        let body = source
            .split("pub fn resolve(")
            .nth(1)
            .and_then(|s| s.split("\npub fn ").next())
            .expect("routes::resolve is in src/routes/mod.rs");
        let mut out = Vec::new();
        for line in body.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("([") else {
                continue;
            };
            let Some((segments, after)) = rest.split_once("], \"") else {
                continue;
            };
            let Some((method, _)) = after.split_once('"') else {
                continue;
            };
            let template: String = segments
                .split(',')
                .map(|s| {
                    let s = s.trim();
                    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        Some(literal) => literal.to_string(),
                        None => format!("{{{s}}}"),
                    }
                })
                .map(|s| format!("/{s}"))
                .collect();
            out.push((method.to_string(), template));
        }
        out
    }

    #[test]
    fn the_source_of_the_router_is_read_whole() {
        let routed = routed();
        // A guard for the reader above: if the router's arms change form, it would find
        // fewer and the next test would pass for nothing.
        assert!(routed.len() >= 20, "{routed:?}");
        assert!(routed.contains(&("PATCH".into(), "/admin/profiles/{id}".into())));
        assert!(routed.contains(&("POST".into(), "/admin/profiles/{id}/sync-models".into())));
    }

    #[test]
    fn every_route_of_the_router_is_in_the_document() {
        let doc = document();
        for (method, template) in routed() {
            let item = &doc["paths"][&template];
            assert!(
                item.get(method.to_ascii_lowercase()).is_some(),
                "{method} {template} is routed but not in docs/openapi.json"
            );
        }
    }

    #[test]
    fn every_path_of_the_document_is_routed() {
        let doc = document();
        for (template, item) in doc["paths"].as_object().unwrap() {
            let path = template.replace("{id}", "7");
            for method in METHODS {
                if item.get(method).is_none() {
                    continue;
                }
                let method = method.to_ascii_uppercase();
                let routed = crate::routes::resolve(&method, &path);
                assert!(
                    routed.is_ok(),
                    "{method} {template} is in docs/openapi.json but not routed: {:?}",
                    routed.err()
                );
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_template_is_matched_by_itself() {
        let doc = document();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
        let templates = templates();
        for (i, template) in templates.iter().enumerate() {
            let path = template.replace("{id}", "7");
            assert_eq!(match_template(&templates, &path), Some(i), "{template}");
        }
        assert_eq!(match_template(&templates, "/admin/profiles/7/nope"), None);
        assert_eq!(match_template(&templates, "/admin/profiles//"), None);
    }
}
