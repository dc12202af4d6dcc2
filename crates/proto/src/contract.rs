//! The typed contract: every socket command with its argument and reply types, so that the
//! daemon's handlers, the CLI, the SDKs, the HTTP API and `schema/` all read one definition.
//!
//! Each module that owns commands declares them with [`commands!`], which makes one type per
//! command implementing [`Cmd`] and a list of [`CommandDoc`]s; [`catalog`] joins the lists.

use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Whether a command only reads (HTTP `GET`) or acts (`POST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Read,
    Action,
}

/// One socket command: `{"cmd": NAME, ...Args}` answered with `{"ok": Reply}`.
pub trait Cmd: 'static {
    const NAME: &'static str;
    const KIND: Kind;
    type Args: Serialize + DeserializeOwned + JsonSchema + Send + 'static;
    type Reply: Serialize + DeserializeOwned + JsonSchema + Send + 'static;
}

/// What `schema/` and the HTTP API know of a command.
#[derive(Clone, Copy)]
pub struct CommandDoc {
    pub name: &'static str,
    pub kind: Kind,
    pub summary: &'static str,
    pub args: fn() -> Schema,
    pub reply: fn() -> Schema,
}

impl std::fmt::Debug for CommandDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandDoc")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The JSON Schema of `T` (a function, so command lists can be constants).
pub fn schema_of<T: JsonSchema>() -> Schema {
    schemars::schema_for!(T)
}

/// The arguments of a command that takes none. Unknown fields are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Declares commands: `Type "name" (Read|Action) Args => Reply;`, each with doc comments.
/// Makes `pub enum Type {}` implementing [`Cmd`], and `pub const LIST: &[CommandDoc]`.
#[macro_export]
macro_rules! commands {
    ($list:ident: $( $(#[doc = $doc:literal])* $ty:ident $name:literal ($kind:ident) $args:ty => $reply:ty; )*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug)]
            pub enum $ty {}
            impl $crate::contract::Cmd for $ty {
                const NAME: &'static str = $name;
                const KIND: $crate::contract::Kind = $crate::contract::Kind::$kind;
                type Args = $args;
                type Reply = $reply;
            }
        )*
        /// The commands this module declares, for the catalog.
        pub const $list: &[$crate::contract::CommandDoc] = &[
            $(
                $crate::contract::CommandDoc {
                    name: $name,
                    kind: $crate::contract::Kind::$kind,
                    summary: concat!($($doc, "\n"),*),
                    args: $crate::contract::schema_of::<$args>,
                    reply: $crate::contract::schema_of::<$reply>,
                },
            )*
        ];
    };
}

/// Every command of the contract, sorted by name.
pub fn catalog() -> Vec<CommandDoc> {
    let mut all: Vec<CommandDoc> = [
        crate::control::COMMANDS,
        crate::bus::COMMANDS,
        crate::supervisor::COMMANDS,
        crate::monitor::COMMANDS,
        crate::pipeline::COMMANDS,
        crate::nats::COMMANDS,
        crate::discovery::COMMANDS,
        crate::scheduler::COMMANDS,
        crate::http::COMMANDS,
        crate::guest::COMMANDS,
    ]
    .concat();
    all.sort_by_key(|c| c.name);
    all
}
