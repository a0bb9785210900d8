//! Build script shared by `cryptoviz-worker` and `cryptoviz-operator` (the operator's Cargo.toml points here).
//!
//! Both binaries use mimalloc with its `override` feature, which defines `malloc`, `free` & co. in the
//! executable so that librdkafka's allocations use it too. Exporting those symbols makes glibc bind its own
//! internal allocations to them as well (glibc's documented way to replace malloc from the main program), so
//! no pointer is ever allocated by one allocator and freed by the other (`strdup`, `realpath`, `getline`…).

const ALLOCATOR_SYMBOLS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "free",
    "cfree",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "malloc_usable_size",
    "strdup",
    "strndup",
    "realpath",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_free",
    "__libc_cfree",
    "__libc_memalign",
    "__libc_valloc",
    "__libc_pvalloc",
];

fn main() {
    // `file!()` is relative to the workspace root, one level above either package that uses this script;
    // given as is, Cargo would look for it under the package and, never finding it, rebuild every time.
    let me = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file!());
    println!("cargo:rerun-if-changed={}", me.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for s in ALLOCATOR_SYMBOLS {
            println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol={s}");
        }
    }
}
