#[genflow::make_registry{ a: A }]
struct App {
    __genflow_x: u8,
}

struct A;

fn main() {}
