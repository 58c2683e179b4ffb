// Keep the plugin mapped after NCCL dlcloses it (NCCL unloads the net plugin
// when its last communicator goes away and may load it again later): our
// statics, and any thread a panic or ffcore may have left, stay valid.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
