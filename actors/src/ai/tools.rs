//! The gateway's tools an agent may call (function calling): what no other gateway's bot
//! can do is act on the conversation itself: name the contact, hand the chat to a person, and
//! put the chat on the tenant's CRM board or move it there (qualify a lead, mark a sale).

use serde_json::json;

use super::ports::ToolSpec;

/// Hands the chat to a human: the bot goes off in it and the tenant is told (`ai.handoff`).
pub const HANDOFF: &str = "handoff_to_human";
/// Sets the chat's contact name (what the tenant sees in chats and the CRM).
pub const SET_CONTACT_NAME: &str = "set_contact_name";

/// Puts this chat on a board of the CRM as a card (once per board: a second call finds it).
pub const CREATE_CARD: &str = "create_card";
/// Moves this chat's card to another column of its board.
pub const MOVE_CARD: &str = "move_card";

/// Every tool, by name.
pub fn catalogue() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: HANDOFF,
            description: "Hand this conversation to a human colleague when the customer asks \
                          for a person, is upset, or needs something you cannot do. Say \
                          goodbye in your text; a human answers next.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why a human should take over"}
                }
            }),
        },
        ToolSpec {
            name: SET_CONTACT_NAME,
            description: "Remember the customer's name once they tell it.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "The customer's name as they gave it"}
                },
                "required": ["name"]
            }),
        },
        ToolSpec {
            name: CREATE_CARD,
            description: "Put this conversation on the business's board as a card, e.g. when \
                          the customer becomes a lead. Boards and columns are named as your \
                          instructions name them; leave them out for the first board and its \
                          first column.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "board": {"type": "string", "description": "The board's name"},
                    "column": {"type": "string", "description": "The column's name"},
                    "title": {"type": "string", "description": "A short title for the card"}
                }
            }),
        },
        ToolSpec {
            name: MOVE_CARD,
            description: "Move this conversation's card to another column of its board, \
                          e.g. when the customer is qualified or has bought.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "column": {"type": "string", "description": "The column's name"},
                    "board": {"type": "string", "description": "The board's name, when the conversation is on several"}
                },
                "required": ["column"]
            }),
        },
    ]
}

/// The tools of these names (unknown names are left out; agents are validated on write).
pub fn named(names: &[String]) -> Vec<ToolSpec> {
    catalogue()
        .into_iter()
        .filter(|t| names.iter().any(|n| n == t.name))
        .collect()
}
