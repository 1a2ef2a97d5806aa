#[genflow::stage(name = Loud)]
fn shout(text: String) -> String {
    text.to_uppercase()
}

fn main() {
    shout(String::new());
}
