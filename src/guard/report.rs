//! File our report that a peer is unreachable: our report key is written only if it is ours
//! (on our lease) or absent; a key someone else put there is left alone.
//!
//! ```text
//! if report on our lease  then put report = now (our lease)
//! else txn: if report absent  then put report = now (our lease)
//! ```
//!
//! A report lives on its reporter's lease, so a reporter that dies takes its report with it.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{absent, Answer};

/// Builds the filing of report key `report` with timestamp `now_ms`, on lease `lease`.
pub(crate) fn build(report: &str, now_ms: i64, lease: i64) -> Txn {
    let put = || {
        TxnOp::put(
            report,
            now_ms.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    Txn::new()
        .when([Compare::lease(report, CompareOp::Equal, lease)])
        .and_then([put()])
        .or_else([TxnOp::txn(
            Txn::new().when([absent(report)]).and_then([put()]),
        )])
}

/// What the filing's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filed {
    /// Our report is written.
    Filed,
    /// The key holds something we did not write; left alone.
    Foreign,
}

/// Reads the answer of [`build`].
pub(crate) fn read(answer: &Answer) -> Filed {
    if answer.succeeded || answer.nested().is_some_and(|inner| inner.succeeded) {
        Filed::Filed
    } else {
        Filed::Foreign
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::describe;
    use super::super::OpAnswer;
    use super::*;

    #[test]
    fn writes_only_a_key_of_ours_or_an_absent_one() {
        assert_eq!(
            describe(&build("r/7", 1_000, 9)),
            [
                "if lease(r/7) == 9",
                "then put r/7 = \"1000\" lease 9",
                "else txn",
                "  if create(r/7) == 0",
                "  then put r/7 = \"1000\" lease 9",
            ]
        );
    }

    #[test]
    fn either_branch_files_the_report() {
        let inner = |succeeded| Answer {
            succeeded,
            ..Answer::default()
        };
        assert_eq!(read(&inner(true)), Filed::Filed);
        let nested = |succeeded| Answer {
            ops: vec![OpAnswer::Txn(inner(succeeded))],
            ..Answer::default()
        };
        assert_eq!(read(&nested(true)), Filed::Filed);
        assert_eq!(read(&nested(false)), Filed::Foreign);
    }
}
