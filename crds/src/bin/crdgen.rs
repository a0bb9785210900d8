//! Prints the CryptoPipeline CRD as YAML: `cargo run -p cryptoviz-crds --bin crdgen > crds/cryptopipeline.yaml`.

fn main() {
    print!("{}", cryptoviz_crds::crd_yaml());
}
