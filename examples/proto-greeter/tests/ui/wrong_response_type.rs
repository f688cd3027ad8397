// A generated client method answers with its own response type only.
use proto_greeter::pb::{CountReply, GreeterClient, HelloRequest};

async fn call(greeter: GreeterClient) -> micro::core::Result<CountReply> {
    greeter.hello(HelloRequest::default()).await
}

fn main() {
    let _ = call;
}
