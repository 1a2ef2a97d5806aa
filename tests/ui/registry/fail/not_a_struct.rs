#[genflow::make_registry{ a: A }]
enum App {
    One,
}

struct A;

fn main() {}
