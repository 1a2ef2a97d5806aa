#[genflow::make_registry{ a: A }]
struct App(u8);

struct A;

fn main() {}
