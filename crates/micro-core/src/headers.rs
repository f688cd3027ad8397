//! Header names of the RPC protocol, as go-micro's mucp spells them.

/// The service a request is for.
pub const SERVICE: &str = "Micro-Service";
/// The endpoint a request is for, e.g. `Greeter.Hello`.
pub const ENDPOINT: &str = "Micro-Endpoint";
/// The method, kept equal to the endpoint as go-micro does.
pub const METHOD: &str = "Micro-Method";
/// The request id, echoed in the response.
pub const ID: &str = "Micro-Id";
/// The content type of the body, which picks the codec.
pub const CONTENT_TYPE: &str = "Content-Type";
/// An error, as go-micro's JSON error.
pub const ERROR: &str = "Micro-Error";
/// The topic of a published message.
pub const TOPIC: &str = "Micro-Topic";
/// The caller's remaining timeout in milliseconds, so the server can stop early.
pub const TIMEOUT: &str = "Timeout";
/// The service that sent a request or published a message.
pub const FROM_SERVICE: &str = "Micro-From-Service";
/// Marks stream messages of the RPC protocol: `open` on the message that
/// opens a stream (a connection carries one stream from then on), `eos` on
/// the message that ends one direction (with [`ERROR`] when it ends in an
/// error). Messages in between carry only their body.
pub const STREAM: &str = "Micro-Stream";
