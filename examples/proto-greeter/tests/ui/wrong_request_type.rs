// A generated client method takes its own request type only.
use proto_greeter::pb::{CountRequest, GreeterClient};

async fn call(greeter: GreeterClient) {
    let _ = greeter.hello(CountRequest { n: 1 }).await;
}

fn main() {
    let _ = call;
}
