//! `GET /console`: the operator's page, its script and its style, embedded in the binary.
//! No key is needed to load them; the page asks for the admin key and sends it to the API.

use crate::http::{Body, Reply};

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Nothing from another origin, no inline script or style, no framing, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One of the console's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Page,
    Script,
    Style,
}

pub fn serve(asset: Asset) -> Reply {
    let (data, content_type) = match asset {
        Asset::Page => (PAGE, "text/html; charset=utf-8"),
        Asset::Script => (SCRIPT, "text/javascript; charset=utf-8"),
        Asset::Style => (STYLE, "text/css; charset=utf-8"),
    };
    Reply {
        status: 200,
        headers: Vec::new(),
        body: Body::Bytes {
            data: data.as_bytes().to_vec(),
            content_type,
        },
    }
    .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    .with_header("X-Content-Type-Options", "nosniff")
    .with_header("X-Frame-Options", "DENY")
    .with_header("Referrer-Policy", "no-referrer")
    .with_header("Cache-Control", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_another_origin_and_has_no_inline_code() {
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn") && !text.contains("@import"));
        }
        assert!(PAGE.contains(r#"<script src="/console/console.js"></script>"#));
        assert!(PAGE.contains(r#"href="/console/console.css""#));
        // Inline scripts, handlers and styles would be refused by the policy.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert!(!PAGE.contains(" onclick=") && !PAGE.contains(" style="));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("));
    }
}
