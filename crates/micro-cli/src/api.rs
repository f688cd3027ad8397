//! `micro api`: an HTTP gateway to services, mapping paths to endpoints
//! the way go-micro's API does.
//!
//! | path | service | endpoint |
//! |---|---|---|
//! | `/greeter/hello` | `greeter` | `Greeter.Hello` |
//! | `/greeter/say/hello` | `greeter` | `Say.Hello` |
//! | `/foo/bar/baz/cat` | `foo.bar` | `Baz.Cat` |
//! | `/v1/greeter/hello` | `v1.greeter` | `Greeter.Hello` |
//!
//! Path parts are camel-cased (`say_hello` and `say-hello` become
//! `SayHello`), and `--namespace` (default `go.micro.api`, as go-micro's) is
//! prefixed to the service name with a dot when set.
//!
//! The gateway listens where a browser can reach it, so a web page must not
//! be able to drive services through it: a request carrying an `Origin`
//! (every cross-site and DNS-rebinding request a browser makes does) is
//! refused unless that origin is allowed with `--cors-origin`; a POST body
//! must say it is JSON (a form post cannot); only an allow-list of request
//! headers becomes call metadata (never `Micro-*` or hop-by-hop ones); the
//! body must arrive within the call timeout; connections are capped.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use micro::core::{CallOptions, Error, Request as RpcRequest};
use micro::TypedClient;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Gateway settings.
#[derive(Clone)]
pub(crate) struct ApiOptions {
    pub(crate) namespace: String,
    pub(crate) max_body: usize,
    pub(crate) timeout: Duration,
    /// Web origins allowed to call from a browser; `*` for any.
    pub(crate) origins: Vec<String>,
    /// Request headers (lower case) forwarded as call metadata.
    pub(crate) forward: Vec<String>,
    pub(crate) max_connections: usize,
}

impl ApiOptions {
    /// The `Access-Control-Allow-Origin` for a request's origin, if allowed.
    fn allowed(&self, origin: Option<&str>) -> Option<HeaderValue> {
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = origin?;
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)).then(|| HeaderValue::from_str(origin).ok())?
    }
}

/// Headers that describe one hop, never a call.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

const ID: &str = "go.micro.api";

fn camel(part: &str) -> String {
    part.split(['_', '-'])
        .filter(|s| !s.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// go-micro's `apiRoute`: the service and `Handler.Method` of a path.
pub(crate) fn route(namespace: &str, path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..").collect();
    if parts.is_empty() {
        return None;
    }
    let method = |ps: &[&str]| ps.iter().map(|p| camel(p)).collect::<Vec<_>>().join(".");
    let is_version = |p: &str| p.len() > 1 && p.starts_with('v') && p[1..].chars().all(|c| c.is_ascii_digit());
    let (name, endpoint) = if parts.len() <= 2 {
        // /foo => foo Foo ; /foo/bar => foo Foo.Bar
        (parts[0].to_string(), method(&parts))
    } else if parts.len() == 3 && is_version(parts[0]) {
        // /v1/foo/bar => v1.foo Foo.Bar
        (parts[..2].join("."), method(&parts[1..]))
    } else {
        // /foo/bar/baz => foo Bar.Baz ; /foo/bar/baz/cat => foo.bar Baz.Cat
        (parts[..parts.len() - 2].join("."), method(&parts[parts.len() - 2..]))
    };
    let name = if namespace.is_empty() { name } else { format!("{}.{name}", namespace.trim_end_matches('.')) };
    Some((name, endpoint))
}

/// CORS response headers: the allowed origin (`None`: no CORS headers).
type Cors = Option<HeaderValue>;

fn json_response(code: u16, body: Bytes, cors: &Cors, forward: &[String]) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(origin) = cors {
        let h = r.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, GET, OPTIONS"));
        let allow =
            std::iter::once("content-type").chain(forward.iter().map(String::as_str)).collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if origin != "*" {
            h.insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    r
}

fn error_response(e: &Error, cors: &Cors, forward: &[String]) -> Response<Full<Bytes>> {
    // go-micro: an error without a valid HTTP code is a 500.
    let code = if (400..600).contains(&e.code) { e.code as u16 } else { 500 };
    json_response(code, Bytes::from(e.to_json()), cors, forward)
}

async fn handle(client: &TypedClient, opts: &ApiOptions, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let fwd = opts.forward.as_slice();
    // A browser names the page's origin on every cross-site request (and on
    // a DNS-rebinding one): only origins the operator allowed get through.
    let origin = req.headers().get(hyper::header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    let cors = opts.allowed(origin.as_deref());
    if let (Some(o), None) = (&origin, &cors) {
        let e = Error::new(
            ID,
            format!("cross-origin request from {o} refused: start the gateway with --cors-origin {o} to allow it"),
            403,
        );
        return error_response(&e, &None, fwd);
    }
    if req.method() == Method::OPTIONS {
        if cors.is_some() {
            let mut r = json_response(204, Bytes::new(), &cors, fwd);
            *r.body_mut() = Full::new(Bytes::new());
            return r;
        }
        let e = Error::method_not_allowed(ID, "OPTIONS is a CORS preflight, and CORS is off: start the gateway with --cors-origin <origin>; calls use POST (or GET)");
        return error_response(&e, &None, fwd);
    }
    let cors = &cors;
    if req.method() != Method::POST && req.method() != Method::GET {
        let e = Error::method_not_allowed(
            ID,
            format!("method {} not allowed: the methods allowed are POST and GET", req.method()),
        );
        return error_response(&e, cors, fwd);
    }
    let Some((service, endpoint)) = route(&opts.namespace, req.uri().path()) else {
        return error_response(&Error::not_found(ID, "no service in the path: use /<service>/<method>"), cors, fwd);
    };
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_json = content_type.split(';').next().is_some_and(|t| {
        let t = t.trim().to_ascii_lowercase();
        t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
    });
    let has_body = req.headers().get("content-length").is_some_and(|v| v != "0")
        || req.headers().contains_key("transfer-encoding");
    if req.method() == Method::POST && has_body && !is_json {
        // A form or text/plain POST is what a web page can send without a
        // preflight: the body must say it is JSON.
        let e = Error::new(
            ID,
            format!("the request body must be JSON with Content-Type: application/json (got {content_type:?})"),
            415,
        );
        return error_response(&e, cors, fwd);
    }
    let mut metadata = HashMap::new();
    for (k, v) in req.headers() {
        let name = k.as_str();
        if name.starts_with("micro-") || HOP_BY_HOP.contains(&name) || !opts.forward.iter().any(|f| f == name) {
            continue;
        }
        if let Ok(v) = v.to_str() {
            metadata.insert(name.to_string(), v.to_string());
        }
    }
    let too_big = |n: usize| Error::new(ID, format!("request body over the limit of {n} bytes"), 413);
    if let Some(len) =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
    {
        if len > opts.max_body {
            return error_response(&too_big(opts.max_body), cors, fwd);
        }
    }
    // The body must arrive within the call's timeout: a client dribbling it
    // holds a connection only that long.
    let body = match tokio::time::timeout(opts.timeout, Limited::new(req.into_body(), opts.max_body).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return error_response(&too_big(opts.max_body), cors, fwd),
        Err(_) => {
            let e = Error::timeout(ID, format!("the request body did not arrive within {:?}", opts.timeout));
            return error_response(&e, cors, fwd);
        }
    };
    let body = if body.iter().all(u8::is_ascii_whitespace) { Bytes::from_static(b"{}") } else { body };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return error_response(&Error::bad_request(ID, "the request body is not JSON"), cors, fwd);
    }
    let rpc = RpcRequest { service, endpoint, content_type: micro::codec::JSON.into(), body, metadata };
    let opts_call = CallOptions { timeout: Some(opts.timeout), ..Default::default() };
    match client.inner().call(rpc, opts_call).await {
        Ok(r) => json_response(200, r.body, cors, fwd),
        Err(e) => error_response(&e, cors, fwd),
    }
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    client: TypedClient,
    opts: ApiOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let conns = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    let shared = Arc::new((client, opts));
    let tracker = tokio_util_like::Tracker::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::warn!("api: connection limit reached; closing");
            continue;
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared.0, &shared.1, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api: connection ended");
            }
        });
    }
    tracker.wait(Duration::from_secs(10)).await;
    Ok(())
}

/// Counts in-flight connections so shutdown can wait for them.
mod tokio_util_like {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[derive(Default, Clone)]
    pub(crate) struct Tracker(Arc<AtomicUsize>);

    impl Tracker {
        pub(crate) fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
            let n = self.0.clone();
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                f.await;
                n.fetch_sub(1, Ordering::SeqCst);
            });
        }
        pub(crate) async fn wait(&self, limit: Duration) {
            let t0 = Instant::now();
            while self.0.load(Ordering::SeqCst) > 0 && t0.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    /// go-micro's rule: an error code that is an HTTP error (400–599) is the
    /// status; anything else (0, 200, 302, 600, a negative) is a 500, with
    /// the error's JSON as the body either way.
    #[test]
    fn error_codes_outside_400_to_599_become_500() {
        for (code, status) in
            [(400, 400), (404, 404), (408, 408), (599, 599), (0, 500), (200, 500), (302, 500), (600, 500), (-1, 500)]
        {
            let e = micro::core::Error::new("svc", "x", code);
            let r = super::error_response(&e, &None, &[]);
            assert_eq!(r.status().as_u16(), status, "code {code}");
        }
    }

    fn r(p: &str) -> Option<(String, String)> {
        route("", p)
    }

    #[test]
    fn go_micro_path_mapping() {
        let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(r("/greeter/hello"), s("greeter", "Greeter.Hello"));
        assert_eq!(r("/greeter/say/hello"), s("greeter", "Say.Hello"));
        assert_eq!(r("/foo/bar/baz/cat"), s("foo.bar", "Baz.Cat"));
        assert_eq!(r("/v1/greeter/hello"), s("v1.greeter", "Greeter.Hello"));
        assert_eq!(r("/greeter/say_hello"), s("greeter", "Greeter.SayHello"));
        assert_eq!(r("/greeter"), s("greeter", "Greeter"));
        assert_eq!(r("/"), None);
        assert_eq!(route("go.micro.api", "/greeter/hello"), s("go.micro.api.greeter", "Greeter.Hello"));
    }
}
