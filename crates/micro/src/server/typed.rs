use crate::stream::TypedStream;
use micro_core::codec::{decode, encode};
use micro_core::{
    headers, BrokerHandler, Codecs, Endpoint, Error, Handled, Handler, HandlerFn, Request, Response, Result, Stream,
    StreamHandlerFn, Subscriber, Value,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// What a handler knows about the request besides its body.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The service the request was addressed to.
    pub service: String,
    /// The endpoint, `Handler.Method`.
    pub endpoint: String,
    /// The caller's metadata.
    pub metadata: HashMap<String, String>,
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    // `a::b::Hello<c::D>` -> `Hello<D>`: strip paths but keep generics readable.
    let mut out = String::new();
    for part in full.split_inclusive(['<', '>', ',', ' ']) {
        out.push_str(part.rsplit("::").next().unwrap_or(part));
    }
    out
}

fn shape<T>(name: &str) -> Value {
    Value { name: name.to_string(), kind: short_type_name::<T>(), values: Vec::new() }
}

/// Turns a typed async function into a [`Handler`] for `name`
/// (`Handler.Method`). The request is decoded with the codec of its content
/// type and the response encoded with the same codec.
pub fn typed_handler<Req, Resp, F, Fut>(name: &str, codecs: Codecs, f: F) -> Handler
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp>> + Send + 'static,
{
    let f = Arc::new(f);
    let func: HandlerFn = Arc::new(move |req: Request| {
        let f = f.clone();
        let codecs = codecs.clone();
        Box::pin(async move {
            let ct = if req.content_type.is_empty() { codecs.default_type().to_string() } else { req.content_type };
            let codec = codecs.get(&ct)?;
            let body: Req = decode(&*codec, &req.body)?;
            let ctx = Context { service: req.service, endpoint: req.endpoint, metadata: req.metadata };
            let resp = f(ctx, body).await?;
            Ok(Response { content_type: ct, body: encode(&*codec, &resp)?, metadata: HashMap::new() })
        })
    });
    Handler::unary(endpoint::<Req, Resp>(name), func)
}

fn endpoint<Req, Resp>(name: &str) -> Endpoint {
    Endpoint {
        name: name.to_string(),
        request: Some(shape::<Req>("request")),
        response: Some(shape::<Resp>("response")),
        metadata: HashMap::new(),
    }
}

/// Turns a typed async function into a stream [`Handler`] for `name`. The
/// function gets a [`TypedStream`] that receives `Req` and sends `Resp`,
/// encoded with the codec of the stream's content type; whatever it returns
/// ends the stream (an `Err` reaches the caller as the stream's error). The
/// same function serves server-streaming, client-streaming and
/// bidirectional calls, over `mucp` and `grpc` alike.
pub fn typed_stream_handler<Req, Resp, F, Fut>(name: &str, codecs: Codecs, f: F) -> Handler
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Context, TypedStream<Resp, Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let f = Arc::new(f);
    let func: StreamHandlerFn = Arc::new(move |req: Request, stream: Stream| {
        let f = f.clone();
        let codecs = codecs.clone();
        Box::pin(async move {
            let ct = if req.content_type.is_empty() { codecs.default_type().to_string() } else { req.content_type };
            let codec = codecs.get(&ct)?;
            let ctx = Context { service: req.service, endpoint: req.endpoint, metadata: req.metadata };
            f(ctx, TypedStream::new(stream, codec)).await
        })
    });
    Handler::streaming(endpoint::<Req, Resp>(name), func)
}

/// Turns a typed async function into a [`Subscriber`] of `topic`; each
/// message is decoded by its `Content-Type` header (the default codec's
/// type when absent).
pub fn typed_subscriber<T, F, Fut>(topic: &str, queue: Option<String>, codecs: Codecs, f: F) -> Subscriber
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let handler: BrokerHandler = Arc::new(move |topic: &str, msg| {
        // Decoded before the future starts: a message that does not decode
        // costs no future, and the topic is needed only for its error.
        let decoded = codecs.get(msg.get(headers::CONTENT_TYPE).unwrap_or(codecs.default_type())).and_then(|codec| {
            decode::<T>(&*codec, &msg.body)
                .map_err(|e| Error::bad_request("go.micro.server", format!("message on {topic}: {}", e.detail)))
        });
        match decoded {
            Ok(value) => Handled::later(f(value)),
            Err(e) => Handled::done(Err(e)),
        }
    });
    Subscriber { topic: topic.to_string(), queue, handler }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_short() {
        assert_eq!(short_type_name::<String>(), "String");
        assert_eq!(short_type_name::<Vec<String>>(), "Vec<String>");
    }
}
