#[genflow::stage]
struct Shout;

fn main() {
    let _ = Shout;
}
