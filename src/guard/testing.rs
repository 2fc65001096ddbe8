//! Test helpers: a transaction written out as readable lines, and a sample owner.
//!
//! etcd-client's `Txn` keeps its request private but derives `Debug`; [`describe`] parses that
//! output (prost's derived `Debug`, a small regular grammar) into one line per compare and
//! operation, so a test states what a builder sends in etcdctl's terms:
//!
//! ```text
//! if create(<key>) == 42          compares (create, mod, version, value, lease)
//! then put <key> = "v" lease 9    the success branch
//! else get <key>                  the failure branch; `txn` nests, its lines indented
//! ```

use etcd_client::Txn;

use super::Owner;

/// The owner the builder tests guard with: id 7 of group `game` in the default layout,
/// created at revision 42, on lease 9.
pub(crate) fn owner() -> Owner {
    let layout = crate::keys::KeyLayout::new("/darkrift").unwrap();
    Owner::new(&layout, 7, "/darkrift/game/7".into(), 42, 9)
}

/// The compares and operations of `txn`, one line each (see the module docs).
pub(crate) fn describe(txn: &Txn) -> Vec<String> {
    let text = format!("{txn:?}");
    let mut parser = Parser {
        rest: text.as_str(),
    };
    let value = parser.value();
    let request = value.field("req");
    let mut lines = Vec::new();
    txn_lines(request, "", &mut lines);
    lines
}

fn txn_lines(request: &Node, indent: &str, out: &mut Vec<String>) {
    for compare in request.field("compare").items() {
        out.push(format!("{indent}if {}", compare_line(compare)));
    }
    for (branch, field) in [("then", "success"), ("else", "failure")] {
        for op in request.field(field).items() {
            let request = op.field("request").inner();
            let body = request.inner();
            match request.name() {
                "RequestPut" => {
                    let lease = body.field("lease").number();
                    let lease = if lease == 0 {
                        String::new()
                    } else {
                        format!(" lease {lease}")
                    };
                    out.push(format!(
                        "{indent}{branch} put {} = {:?}{lease}",
                        body.field("key").text(),
                        body.field("value").text()
                    ));
                }
                "RequestRange" => out.push(format!(
                    "{indent}{branch} get {}{}",
                    range(body),
                    if body.field("keys_only").name() == "true" {
                        " keys-only"
                    } else {
                        ""
                    }
                )),
                "RequestDeleteRange" => {
                    out.push(format!("{indent}{branch} delete {}", range(body)));
                }
                "RequestTxn" => {
                    out.push(format!("{indent}{branch} txn"));
                    txn_lines(body, &format!("{indent}  "), out);
                }
                other => out.push(format!("{indent}{branch} {other}?")),
            }
        }
    }
}

fn range(request: &Node) -> String {
    let key = request.field("key").text();
    match request.field("range_end").text() {
        end if end.is_empty() => key,
        end => format!("{key}..{end}"),
    }
}

fn compare_line(compare: &Node) -> String {
    let op = match compare.field("result").name() {
        "Equal" => "==",
        "Greater" => ">",
        "Less" => "<",
        "NotEqual" => "!=",
        other => other,
    };
    let target = compare.field("target_union").inner();
    let key = compare.field("key").text();
    let (what, operand) = match target.name() {
        "CreateRevision" => ("create", target.inner().number().to_string()),
        "ModRevision" => ("mod", target.inner().number().to_string()),
        "Version" => ("version", target.inner().number().to_string()),
        "Lease" => ("lease", target.inner().number().to_string()),
        "Value" => ("value", format!("{:?}", target.inner().text())),
        other => (other, String::new()),
    };
    format!("{what}({key}) {op} {operand}")
}

/// A parsed `Debug` value: `Name`, `Name(x)`, `Name { f: x, … }`, `[x, …]` or a number.
#[derive(Debug)]
enum Node {
    Word(String),
    Tuple(String, Box<Node>),
    Struct(Vec<(String, Node)>),
    List(Vec<Node>),
}

impl Node {
    fn field(&self, name: &str) -> &Node {
        match self {
            Node::Struct(fields) => fields
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| panic!("no field {name} in {self:?}"), |(_, v)| v),
            _ => panic!("not a struct: {self:?}"),
        }
    }

    fn items(&self) -> &[Node] {
        match self {
            Node::List(items) => items,
            _ => panic!("not a list: {self:?}"),
        }
    }

    fn name(&self) -> &str {
        match self {
            Node::Word(w) | Node::Tuple(w, _) => w,
            _ => panic!("no name: {self:?}"),
        }
    }

    fn inner(&self) -> &Node {
        match self {
            Node::Tuple(_, inner) => inner,
            _ => panic!("not a tuple: {self:?}"),
        }
    }

    fn number(&self) -> i64 {
        self.name().parse().expect("a number")
    }

    /// A byte list read as (lossy) UTF-8.
    fn text(&self) -> String {
        let bytes: Vec<u8> = self
            .items()
            .iter()
            .map(|b| u8::try_from(b.number()).expect("a byte"))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn eat(&mut self, token: &str) -> bool {
        self.rest = self.rest.trim_start();
        if let Some(rest) = self.rest.strip_prefix(token) {
            self.rest = rest;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> String {
        self.rest = self.rest.trim_start();
        let end = self
            .rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        word.to_owned()
    }

    fn value(&mut self) -> Node {
        if self.eat("[") {
            let mut items = Vec::new();
            while !self.eat("]") {
                items.push(self.value());
                self.eat(",");
            }
            return Node::List(items);
        }
        let word = self.word();
        if self.eat("(") {
            let inner = self.value();
            assert!(self.eat(")"), "unclosed tuple at {:?}", self.rest);
            return Node::Tuple(word, Box::new(inner));
        }
        if self.eat("{") {
            let mut fields = Vec::new();
            while !self.eat("}") {
                let name = self.word();
                assert!(self.eat(":"), "no colon at {:?}", self.rest);
                fields.push((name, self.value()));
                self.eat(",");
            }
            return Node::Struct(fields);
        }
        Node::Word(word)
    }
}
