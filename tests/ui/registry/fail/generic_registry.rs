#[genflow::make_registry{ a: A }]
struct App<T> {
    field: T,
}

struct A;

fn main() {}
