// A method the .proto does not have is not there (no endpoint strings to mistype).
use proto_greeter::pb::{GreeterClient, HelloRequest};

async fn call(greeter: GreeterClient) {
    let _ = greeter.helo(HelloRequest::default()).await;
}

fn main() {
    let _ = call;
}
