//! A panic while handling a request is answered, not a dropped connection: the client gets
//! upstream's `500 {"detail":"Internal server error."}`, the panic is logged with the
//! request's cid and counted in `keystone_http_panics_total`. The hoop sits inside the
//! metrics and request-log hoops, so both see the 500 like any other response.

use super::ApiError;
use super::access::Cid;
use futures_util::FutureExt;
use salvo::prelude::*;
use std::panic::AssertUnwindSafe;

/// Runs the rest of the chain and turns a panic into a JSON 500.
#[handler]
pub async fn catch_panics(
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
    ctrl: &mut FlowCtrl,
) {
    // Unwind safety: after a panic nothing of the request's half-done work is reused; the
    // response is rebuilt from scratch below and the depot is dropped with the request.
    let outcome = AssertUnwindSafe(ctrl.call_next(req, depot, res))
        .catch_unwind()
        .await;
    let Err(payload) = outcome else {
        return;
    };
    ctrl.skip_rest();
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    let cid = depot
        .get_typed::<Cid>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    tracing::error!(
        keystone_cid = %cid,
        "request handler panicked: {what} ({} {}, cid {cid})",
        req.method(),
        req.uri().path()
    );
    crate::infra::metrics::handler_panicked();
    // Nothing the handler prepared (headers, cookies, a partial body) goes out with the 500.
    res.headers_mut().clear();
    res.cookies = Default::default();
    res.take_body();
    ApiError::Internal.render(res);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[handler]
    async fn boom(req: &mut Request) {
        if req.uri().path().starts_with("/panic-test/boom/") {
            panic!("deliberate test panic");
        }
    }

    #[handler]
    async fn fine(res: &mut Response) {
        res.render(Json(serde_json::json!({"ok": true})));
    }

    /// Log lines written while the test runs (a `tracing` writer).
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str, cid: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-KEYSTONE-CID: {cid}\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        String::from_utf8_lossy(&raw).to_string()
    }

    /// The same hoops, in the same order, as `crate::web::service` around a handler that
    /// panics: the client gets a JSON 500, the connection stays usable for the next request,
    /// the panic is logged with the cid, and the metrics count it with the in-flight gauge
    /// back at zero.
    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_handler_is_answered_logged_and_counted() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let handle = crate::infra::metrics::recorder().expect("metrics recorder");

        let router = Router::with_path("panic-test")
            .push(Router::with_path("boom/").get(boom))
            .push(Router::with_path("fine/").get(fine));
        let service = Service::new(router)
            .hoop(crate::infra::metrics::http_metrics)
            .hoop(super::super::request_log::log_requests)
            .hoop(catch_panics);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).expect("acceptor");
        let server = tokio::spawn(async move { Server::new(acceptor).serve(service).await });

        let cid = "9a0e5f7c-1d2b-4c3d-8e4f-5a6b7c8d9e0f";
        let raw = get(addr, "/panic-test/boom/", cid).await;
        assert!(raw.starts_with("HTTP/1.1 500"), "{raw}");
        assert!(
            raw.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{raw}"
        );
        assert!(
            raw.ends_with(r#"{"detail":"Internal server error."}"#),
            "{raw}"
        );
        // The server goes on serving.
        let raw = get(addr, "/panic-test/fine/", cid).await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");

        let logs = String::from_utf8_lossy(&captured.0.lock().expect("logs")).to_string();
        let panic_line = logs
            .lines()
            .find(|l| l.contains("request handler panicked: deliberate test panic"))
            .unwrap_or_else(|| panic!("no panic record in:\n{logs}"));
        assert!(panic_line.contains("ERROR"), "{panic_line}");
        assert!(panic_line.contains(cid), "{panic_line}");
        // The request-log hoop outside saw the 500.
        assert!(
            logs.lines()
                .any(|l| l.contains("GET /panic-test/boom/ 500") && l.contains(cid)),
            "{logs}"
        );

        let text = handle.render();
        let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
        assert!(
            has(
                r#"keystone_http_requests_total{method="GET",route="/panic-test/boom/",status="500"} 1"#
            ),
            "{text}"
        );
        assert!(has("keystone_http_panics_total 1"), "{text}");
        assert!(has("keystone_http_requests_in_flight 0"), "{text}");
        server.abort();
    }
}
