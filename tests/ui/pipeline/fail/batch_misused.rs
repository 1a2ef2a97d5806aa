#[genflow::pipeline{
    a: A,
    #[fused]
    #[batch(size = 10, timeout = std::time::Duration::from_millis(5))]
    b: B,
    #[replicas(2, ordered)]
    #[batch(size = 10, timeout = std::time::Duration::from_millis(5))]
    c: C,
    #[batch(size = 10)]
    d: D,
    #[batch(timeout = std::time::Duration::ZERO)]
    e: E,
    #[batch(size = 10, timeout = std::time::Duration::ZERO, key = 1)]
    #[batch(size = 10, timeout = std::time::Duration::ZERO)]
    f: F,
    #[concurrency(4)]
    #[batch(size = 10, timeout = std::time::Duration::ZERO)]
    g: G,
}]
struct Flow;

struct A;
struct B;
struct C;
struct D;
struct E;
struct F;
struct G;

fn main() {}
