include!("crates/loss-tch/libtorch_link.rs");

fn main() {
    link_libtorch();
}
