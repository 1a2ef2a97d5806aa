#[genflow::make_registry{ counter }]
struct App;

fn main() {}
