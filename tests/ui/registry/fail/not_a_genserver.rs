struct A;

#[genflow::make_registry{ a: A }]
struct App;

fn main() {}
