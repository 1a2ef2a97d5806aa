#[genflow::make_registry{ a: A, b: A, a: A }]
struct App;

struct A;

fn main() {}
