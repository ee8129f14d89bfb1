//! What stands before the routes: the API key, CORS, and admission while the server drains.
//!
//! - [`require_api_key`]: with a key set, every request but those to the public paths
//!   (`/health` by default) needs `Authorization: Bearer <key>`; the comparison takes the
//!   same time wherever the keys differ.
//! - [`cors`]: the origins allowed to call from a browser (none unless given).
//! - [`admit`]: counts the requests in flight, a streamed response until its last byte;
//!   once shutdown starts, new work gets 503 while `/health` reports draining; at the end of
//!   the grace period ([`Drain::cut`]) the requests still running are answered with an
//!   error (a 500, or an error event on a stream) and their work is cancelled.

use crate::error::ApiError;
use crate::routes::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::{watch, Notify};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Who may call, and from where.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The key clients send as `Authorization: Bearer <key>`; `None`: no key needed.
    pub api_key: Option<String>,
    /// Paths answered without the key (`/health` for load balancers by default).
    pub public_paths: Vec<String>,
    /// Origins whose pages may call the server (`*`: any); empty: no CORS headers.
    pub cors_allow_origins: Vec<String>,
}

impl Access {
    /// No key; `/health` public; no CORS.
    pub fn open() -> Self {
        Access {
            api_key: None,
            public_paths: vec!["/health".into()],
            cors_allow_origins: Vec::new(),
        }
    }
}

/// Checks the API key of a request (a no-op without a key).
pub async fn require_api_key(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &access.api_key else {
        return next.run(request).await;
    };
    if request.method() == Method::OPTIONS
        || access
            .public_paths
            .iter()
            .any(|p| p == request.uri().path())
    {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(key.as_bytes())) => {
            next.run(request).await
        }
        Some(_) => ApiError::Unauthorized("the API key is not valid".into()).into_response(),
        None => ApiError::Unauthorized(
            "this server needs an API key: send `Authorization: Bearer <key>`".into(),
        )
        .into_response(),
    }
}

/// The CORS layer for `origins` (`*` allows any); `None` when there are none.
pub fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| format!("`{o}` is not a valid origin")))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    ))
}

/// Requests in flight and the end of the grace period, shared by [`admit`] and shutdown.
#[derive(Debug)]
pub struct Drain {
    in_flight: AtomicUsize,
    idle: Notify,
    cut: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            cut: watch::channel(false).0,
        }
    }
}

impl Drain {
    /// Requests (and streamed responses) not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Ends every request still running: each answers with an error and its work stops.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    async fn cut_off(mut cut: watch::Receiver<bool>) {
        let _ = cut.wait_for(|&cut| cut).await;
    }
}

/// One request in flight; leaving decrements the count.
struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Paths that keep answering while the server drains.
const ALWAYS_ANSWERED: [&str; 3] = ["/health", "/info", "/metrics"];

/// Admission: 503 for new work while draining, the in-flight count, and the cut at the end
/// of the grace period.
pub async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if ALWAYS_ANSWERED.contains(&path) {
        return next.run(request).await;
    }
    if state.is_shutting_down() {
        return ApiError::Unavailable("the server is shutting down".into()).into_response();
    }
    let drain = state.drain.clone();
    let in_flight = drain.enter();
    let cut = drain.cut.subscribe();
    if *cut.borrow() {
        return ApiError::Unavailable("the server is shutting down".into()).into_response();
    }
    // Dropping the handler drops its channels to the engines, which cancel its work.
    let response = tokio::select! {
        response = next.run(request) => response,
        () = Drain::cut_off(cut.clone()) => return cut_error().into_response(),
    };
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = guarded_stream(body, cut, in_flight);
    Response::from_parts(parts, body)
}

fn cut_error() -> ApiError {
    ApiError::Internal("the server shut down before this request finished".into())
}

/// A server-sent event stream that counts as in flight until its end, and that ends with an
/// `error` event when the grace period runs out.
fn guarded_stream(body: Body, cut: watch::Receiver<bool>, in_flight: InFlight) -> Body {
    enum State {
        Streaming(axum::body::BodyDataStream, watch::Receiver<bool>, InFlight),
        Done,
    }
    let events = stream::unfold(
        State::Streaming(body.into_data_stream(), cut, in_flight),
        |state| async move {
            let State::Streaming(mut data, cut, in_flight) = state else {
                return None;
            };
            tokio::select! {
                item = data.next() => {
                    item.map(|item| (item, State::Streaming(data, cut, in_flight)))
                }
                () = Drain::cut_off(cut.clone()) => {
                    // As a failed generation ends its stream: the error, then `[DONE]`.
                    let event = format!("data: {}\n\ndata: [DONE]\n\n", cut_error().body());
                    Some((Ok(Bytes::from(event)), State::Done))
                }
            }
        },
    );
    Body::from_stream(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that outlives the grace period ends with the error event and `[DONE]`, and
    /// stops counting as in flight.
    #[tokio::test]
    async fn a_cut_stream_ends_with_an_error_event() {
        let drain = Arc::new(Drain::default());
        let first = stream::once(async { Ok::<_, std::io::Error>(Bytes::from("data: {}\n\n")) });
        let endless = first.chain(stream::pending());
        let body = guarded_stream(
            Body::from_stream(endless),
            drain.cut.subscribe(),
            drain.enter(),
        );
        assert_eq!(drain.in_flight(), 1);
        let mut data = body.into_data_stream();
        assert_eq!(data.next().await.unwrap().unwrap(), "data: {}\n\n");
        drain.cut();
        let last = data.next().await.unwrap().unwrap();
        let last = String::from_utf8_lossy(&last);
        assert!(
            last.contains("shut down before this request finished"),
            "{last}"
        );
        assert!(last.ends_with("data: [DONE]\n\n"), "{last}");
        assert!(data.next().await.is_none());
        assert_eq!(drain.in_flight(), 0);
    }
}
