#[genflow::make_registry{ counter: 42 }]
struct App;

fn main() {}
