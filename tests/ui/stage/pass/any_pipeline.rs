//! One function stage serves pipelines of different types.

#[genflow::stage]
pub fn shout(text: String) -> String {
    text.to_uppercase()
}

#[genflow::pipeline{ shout: Shout<Plain> }]
struct Plain;

#[genflow::pipeline{ first: Shout<WithFields>, #[replicas(2)] second: Shout<WithFields> }]
struct WithFields {
    name: String,
}

fn main() {
    fn running<T: Send + Sync + Clone + 'static>() {}
    running::<Plain>();
    running::<WithFields>();
}
