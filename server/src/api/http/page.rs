//! The `/health` page (overview matrix and history strips, DERP region × vantage matrix with
//! per-node detail, vantages with ages, proxies and provisioner daemons, per-section views with
//! dismiss toggles; refreshes itself, force-refresh button, token prompt) and the
//! `/health/codes` documentation. The page's HTML, CSS and JS are files beside this module
//! (`page/`), built into the binary.

use std::fmt::Write as _;

use vantage_proto::codes::CATALOGUE;

/// `GET /health`.
pub const PAGE: &str = include_str!("page/index.html");
/// `GET /health/page.css`.
pub const CSS: &str = include_str!("page/page.css");
/// `GET /health/page.js`.
pub const JS: &str = include_str!("page/page.js");

/// The code documentation page; each code is an anchor (`#eacs04`).
pub fn codes_page() -> String {
    let mut o = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Health codes · vantage</title></head><body style=\"font-family:system-ui,sans-serif;max-width:56em;margin:2em auto\"><h1>Health codes</h1>",
    );
    for d in CATALOGUE {
        let _ = write!(
            o,
            "<section id=\"{}\"><h2>{} — {}</h2><p><i>Section: {}</i></p><p>{}</p></section>",
            d.code.to_ascii_lowercase(),
            d.code,
            d.title,
            d.section,
            d.description
        );
    }
    o.push_str("</body></html>");
    o
}
