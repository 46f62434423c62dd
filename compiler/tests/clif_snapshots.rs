//! Golden Cranelift IR of representative stages (`flowc compile --emit clif`).
//! Update with `INSTA_UPDATE=always cargo test -p flow-compiler --test clif_snapshots`
//! and review the diff.

use flow_compiler::exec::codegen::clif;
use flow_compiler::exec::stage::fused_stages;

const SCHEMA: &str = "schema Txn { id: string, account: string, merchant: string?, amount: decimal(12, 2), \
    fee: decimal(30, 4), ts: timestamp, status: string }\n\
    source txns: Txn = stdin(format: json)\nsink out = stdout(format: json)\n";

fn clif_of(pipeline: &str) -> String {
    let src = format!("{SCHEMA}pipeline p = from txns {pipeline} -> out\n");
    let c = flow_compiler::compile_str("snap.flow", &src);
    assert!(!c.has_errors(), "{:?}", c.diagnostics.iter().map(|d| d.message.clone()).collect::<Vec<_>>());
    let program = c.program.expect("program");
    let stages = fused_stages(&program.pipelines[0]);
    assert_eq!(stages.len(), 1);
    clif(&stages[0], &program).expect("clif")
}

#[test]
fn flagship_filter() {
    insta::assert_snapshot!(clif_of("| where amount > 0.0"));
}

#[test]
fn string_functions() {
    insta::assert_snapshot!(clif_of(
        "| where starts_with(account, \"acct-\") and status == \"approved\" \
         | select { id, who: upper(account), m: merchant ?? \"unknown\", short: substring(id, 1, 4) }"
    ));
}

#[test]
fn decimal_arithmetic() {
    insta::assert_snapshot!(clif_of("| select { id, total: amount * 2 + fee, share: amount / 3 }"));
}
