#[genflow::make_registry{}]
struct App;

fn main() {}
