// genserver 0.2.2 read `a: A b: B` as two entries; genflow wants commas.
#[genflow::make_registry{ a: A b: B }]
struct App;

struct A;
struct B;

fn main() {}
