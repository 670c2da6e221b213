//! The caller's deadline, carried into the calls a service makes for it.
//!
//! A call arriving with `grpc-timeout` runs with its deadline in a task-local
//! (the layer below scopes the handler's future), and every call one service
//! makes to another for a tenant ([`crate::auth::service_request`]) sends
//! what is left of it as its own `grpc-timeout`. So a client that gives up
//! after 2 s does not leave metering waiting 10 s on the wallet for it: the
//! wallet stops at the same moment and the caller's retry is not raced by
//! work nobody waits for. Work a service does on its own (workers, sweeps,
//! tasks it spawns) has no caller and keeps the channels' own timeouts.
//!
//! Written here because tonic offers the header but no propagation, and a
//! task-local around the handler is all it takes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    pub(crate) static DEADLINE: Instant;
}

/// What is left of the deadline of the call being served, if it has one.
pub fn remaining() -> Option<Duration> {
    DEADLINE.try_with(|deadline| deadline.saturating_duration_since(Instant::now())).ok()
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3_600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Puts each call's deadline (from its `grpc-timeout`) where [`remaining`]
/// finds it while the call's handler runs, and ends a response still
/// streaming at the deadline with DEADLINE_EXCEEDED, so nothing streams on
/// to a caller that has given up (tonic's own timeout stops at the
/// response's headers).
#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

type Answer<E> = Result<http::Response<tonic::body::Body>, E>;

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<BoxFuture<'static, Answer<S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout =
            request.headers().get("grpc-timeout").and_then(|value| value.to_str().ok()).and_then(parse_grpc_timeout);
        let Some(deadline) = timeout.and_then(|timeout| Instant::now().checked_add(timeout)) else {
            return Either::Right(self.inner.call(request));
        };
        let answer = DEADLINE.scope(deadline, self.inner.call(request));
        Either::Left(Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Bounded {
                    inner: body,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                    ended: false,
                })
            }))
        }))
    }
}

/// A response body ended at its call's deadline, with DEADLINE_EXCEEDED.
struct Bounded {
    inner: tonic::body::Body,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
}

impl http_body::Body for Bounded {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                this.ended = true;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from(tonic::Code::DeadlineExceeded as i32));
                trailers.insert("grpc-message", http::HeaderValue::from_static("the%20deadline%20has%20passed"));
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "10", "10s", "-1S", "123456789S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_deadline_is_known_inside_the_call_only() {
        assert_eq!(remaining(), None);
        let left = DEADLINE.scope(Instant::now() + Duration::from_secs(5), async { remaining() }).await.unwrap();
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4), "{left:?}");
        let gone = DEADLINE.scope(Instant::now() - Duration::from_millis(1), async { remaining() }).await;
        assert_eq!(gone, Some(Duration::ZERO));
    }
}
