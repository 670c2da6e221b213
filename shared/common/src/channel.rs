//! Channels to other services. Each call made through one is a client span
//! (OpenTelemetry's RPC conventions, like the server's), the child of the
//! span it is made in, and carries that client span's W3C trace context,
//! so the callee's span is its child: one request, one trace, across
//! services.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::metrics::{EndOfCall, Ending, grpc_status};

/// A channel to another service whose calls are traced.
#[derive(Clone, Debug)]
pub struct ServiceChannel {
    inner: Channel,
}

impl ServiceChannel {
    pub fn new(inner: Channel) -> Self {
        Self { inner }
    }
}

impl tower::Service<http::Request<Body>> for ServiceChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let span = crate::telemetry::client_span(request.uri().path());
        crate::telemetry::inject_into_headers(&span, request.headers_mut());
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.instrument(span.clone()).await {
                Ok(response) => {
                    let headers_code = grpc_status(response.headers());
                    Ok(response.map(|body| Body::new(Ending::new(body, ClientCall(span), headers_code))))
                }
                Err(error) => {
                    // Not answered at all: the connection failed.
                    crate::telemetry::end_rpc_span(&span, tonic::Code::Unavailable);
                    Err(error)
                }
            }
        })
    }
}

/// A call made: its span ends with the status the callee answered.
struct ClientCall(tracing::Span);

impl EndOfCall for ClientCall {
    fn end(self, code: tonic::Code) {
        crate::telemetry::end_rpc_span(&self.0, code);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tracing::Instrument;

    use crate::telemetry::captured::{Lines, subscriber};

    #[tokio::test(flavor = "current_thread")]
    async fn the_callee_continues_the_trace_of_the_call_made_to_it() {
        let lines = Lines::default();
        let _default = tracing::subscriber::set_default(subscriber(&lines));
        // A server that keeps the trace context each call arrives with.
        let arrived: Arc<Mutex<Vec<String>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let keep = arrived.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tower::util::MapRequestLayer::new(move |request: http::Request<tonic::body::Body>| {
                    let traceparent = request.headers().get("traceparent").map(|value| value.to_str().unwrap());
                    keep.lock().unwrap().push(traceparent.unwrap_or_default().to_owned());
                    request
                }))
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = crate::tls::endpoint(&format!("http://{address}")).unwrap().connect_lazy();

        async {
            HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.unwrap();
            tracing::info!("called");
        }
        .instrument(tracing::info_span!("handler"))
        .await;

        let line = lines.parsed().pop().unwrap();
        let (trace, handler_span) = (&line["openTelemetry"]["traceId"], &line["openTelemetry"]["spanId"]);
        let arrived = arrived.lock().unwrap().clone();
        assert_eq!(arrived.len(), 1, "{arrived:?}");
        let parts: Vec<&str> = arrived[0].split('-').collect();
        assert_eq!(parts.len(), 4, "a W3C traceparent: {arrived:?}");
        assert_eq!(parts[1], trace, "the callee is in the caller's trace: {arrived:?} {line}");
        assert_ne!(parts[2], handler_span, "its parent is the client span, a child of the handler's: {arrived:?}");
        assert_eq!(parts[2].len(), 16, "{arrived:?}");
    }
}
