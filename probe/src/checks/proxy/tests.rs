use super::*;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::testutil;

/// Serve `app` on 127.0.0.1:0 and return its base URL.
async fn serve(app: Router) -> String {
    format!("http://{}", testutil::http(app).await)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

fn target(url: &str) -> pb::WorkspaceProxyTarget {
    pb::WorkspaceProxyTarget {
        name: "eu".into(),
        url: url.into(),
    }
}

async fn poll(url: &str) -> pb::WorkspaceProxyResult {
    check(&client(), &target(url), TIMEOUT).await
}

fn json(body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

#[tokio::test]
async fn valid_report_is_ok_with_version() {
    let app = Router::new().route(
        "/healthz-report",
        get(|| async {
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (
                        header::HeaderName::from_static("x-coder-build-version"),
                        "v2.26.0+abc",
                    ),
                ],
                r#"{"errors":[],"warnings":["version mismatch: primary coderd (v2.26.0) != workspace proxy (v2.25.0)"]}"#,
            )
        }),
    );
    let base = serve(app).await;
    // A trailing slash on the URL is dropped once.
    let r = poll(&format!("{base}/")).await;
    assert_eq!(r.name, "eu");
    assert_eq!(r.status, "ok", "{r:?}");
    assert!(r.errors.is_empty());
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.version, "v2.26.0+abc");
}

#[tokio::test]
async fn report_with_errors_is_unhealthy_with_its_errors() {
    let app = Router::new().route(
        "/healthz-report",
        get(|| async {
            json(r#"{"errors":["failed to get build info: boom"],"warnings":null,"extra":1}"#)
        }),
    );
    let r = poll(&serve(app).await).await;
    assert_eq!(r.status, "unhealthy");
    assert_eq!(r.errors, vec!["failed to get build info: boom".to_owned()]);
    assert!(r.warnings.is_empty());
}

#[tokio::test]
async fn html_page_is_not_a_proxy_with_content_type_hint() {
    let app = Router::new().route(
        "/healthz-report",
        get(|| async { axum::response::Html("<html><body>Welcome</body></html>") }),
    );
    let base = serve(app).await;
    let r = poll(&base).await;
    assert_eq!(r.status, "unhealthy");
    assert_eq!(r.errors.len(), 1);
    let e = &r.errors[0];
    let url = format!("{base}/healthz-report");
    assert!(
        e.starts_with(&format!(
            "proxy url {url:?} is not a coder proxy instance, verify the url is correct\n"
        )),
        "{e}"
    );
    assert!(
        e.contains(
            "incorrect content type: unexpected non-JSON response \"text/html; charset=utf-8\""
        ),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_json_is_a_decode_failure() {
    let app = Router::new()
        .route(
            "/healthz-report",
            get(|| async { json(r#"{"errors":"not a list"}"#) }),
        )
        .route("/array/healthz-report", get(|| async { json("[1,2,3]") }));
    let base = serve(app).await;
    for url in [base.clone(), format!("{base}/array")] {
        let r = poll(&url).await;
        assert_eq!(r.status, "unhealthy", "{url}");
        let e = &r.errors[0];
        assert!(e.contains("is not a coder proxy instance"), "{e}");
        assert!(
            e.contains("received a status code 200, but failed to decode health report body: "),
            "{e}"
        );
    }
}

#[tokio::test]
async fn coderd_looking_answer_is_probably_a_primary() {
    let app = Router::new().route(
        "/healthz-report",
        get(|| async {
            let mut r = axum::response::Html("<!doctype html><title>Coder</title>").into_response();
            r.headers_mut()
                .insert("x-coder-build-version", HeaderValue::from_static("v2.26.0"));
            r
        }),
    );
    let r = poll(&serve(app).await).await;
    assert_eq!(r.status, "unhealthy");
    let e = &r.errors[0];
    assert!(
        e.contains("is a coder instance, but unable to decode the response payload. Could this be a primary coderd and not a proxy?"),
        "{e}"
    );
    assert!(e.contains("incorrect content type"), "{e}");
}

#[tokio::test]
async fn status_503_with_api_error_is_unhealthy_multiline() {
    let app = Router::new().route(
        "/healthz-report",
        get(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json(r#"{"message":"proxy is shutting down","detail":"draining"}"#),
            )
        }),
    );
    let base = serve(app).await;
    let r = poll(&base).await;
    assert_eq!(r.status, "unhealthy");
    let e = &r.errors[0];
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines[0], "unexpected status code 503. ");
    assert!(
        lines[1].starts_with(&format!(
            "Encountered error, send a request to \"{base}/healthz-report\""
        )),
        "{e}"
    );
    assert!(
        lines.contains(&"Error Message: proxy is shutting down"),
        "{e}"
    );
    assert!(lines.contains(&"Error Detail: draining"), "{e}");
}

#[tokio::test]
async fn status_404_without_api_error_still_explains() {
    let r = poll(&serve(Router::new()).await).await;
    assert_eq!(r.status, "unhealthy");
    let e = &r.errors[0];
    assert!(e.starts_with("unexpected status code 404. \n"), "{e}");
    assert!(!e.contains("Error Message:"), "{e}");
}

#[test]
fn error_bodies_are_cut_to_a_few_hundred_bytes() {
    let long = "é".repeat(10_000);
    let api = format!(
        "{{\"message\":\"{long}\",\"detail\":\"{long}\",\"validations\":[{}]}}",
        vec![format!("{{\"field\":\"f\",\"detail\":\"{long}\"}}"); 100].join(",")
    );
    for body in [api.into_bytes(), long.clone().into_bytes()] {
        let e = status_error(502, "http://p/healthz-report", &Ok(body));
        assert!(e.len() < 6 * 1024, "{} bytes", e.len());
        assert!(e.contains('…'), "the cut is marked");
    }
}

#[tokio::test]
async fn oversized_body_is_cut_and_unhealthy() {
    let app = Router::new().route(
        "/healthz-report",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!(
                    "{{\"errors\":[],\"warnings\":[\"{}\"]}}",
                    "x".repeat(MAX_BODY)
                ),
            )
        }),
    );
    let r = poll(&serve(app).await).await;
    assert_eq!(r.status, "unhealthy");
    assert!(
        r.errors[0].contains("larger than 65536 bytes"),
        "{:?}",
        r.errors
    );
}

#[tokio::test]
async fn silent_server_is_unreachable_after_the_timeout() {
    let addr = testutil::silent().await;
    let started = std::time::Instant::now();
    let r = check(
        &client(),
        &target(&format!("http://{addr}")),
        Duration::from_millis(300),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status, "unreachable");
    assert!(
        r.errors[0].starts_with("request to proxy failed: ")
            && r.errors[0].contains("timed out after 300ms"),
        "{:?}",
        r.errors
    );
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let addr = testutil::closed_port().await;
    let r = poll(&format!("http://{addr}")).await;
    assert_eq!(r.status, "unreachable");
    assert!(
        r.errors[0].starts_with("request to proxy failed: "),
        "{:?}",
        r.errors
    );
}

#[tokio::test]
async fn empty_and_invalid_urls() {
    let r = poll("").await;
    assert_eq!(r.status, "unregistered");
    assert!(r.errors.is_empty());
    let r = poll("not a url").await;
    assert_eq!(r.status, "unhealthy");
    assert!(
        r.errors[0].starts_with("failed to parse proxy url: "),
        "{:?}",
        r.errors
    );
    let r = poll("ftp://example.com").await;
    assert_eq!(r.status, "unhealthy");
    assert!(
        r.errors[0].contains("unsupported scheme \"ftp\""),
        "{:?}",
        r.errors
    );
}

#[test]
fn decode_report_mirrors_go_json() {
    let ok = |b: &str| decode_report(b.as_bytes());
    assert_eq!(ok(r#"{"errors":[],"warnings":[]}"#), Ok((vec![], vec![])));
    assert_eq!(ok("{}"), Ok((vec![], vec![])));
    assert_eq!(ok("null"), Ok((vec![], vec![])));
    assert_eq!(
        ok(r#"{"Errors":["e"],"WARNINGS":["w"]}"#),
        Ok((vec!["e".into()], vec!["w".into()]))
    );
    assert_eq!(
        ok(r#"{"errors":["e"]} trailing"#),
        Ok((vec!["e".into()], vec![]))
    );
    assert!(ok("").is_err());
    assert!(ok("<html>").is_err());
    assert!(ok(r#""text""#).is_err());
    assert!(ok(r#"{"warnings":[1]}"#).is_err());
}
