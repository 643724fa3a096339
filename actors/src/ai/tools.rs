//! The gateway's tools an agent may call (function calling): what no other gateway's bot
//! can do is act on the conversation itself. `create_card` / `move_card` join with the CRM.

use serde_json::json;

use super::ports::ToolSpec;

/// Hands the chat to a human: the bot goes off in it and the tenant is told (`ai.handoff`).
pub const HANDOFF: &str = "handoff_to_human";
/// Sets the chat's contact name (what the tenant sees in chats and the CRM).
pub const SET_CONTACT_NAME: &str = "set_contact_name";

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
    ]
}

/// The tools of these names (unknown names are left out; agents are validated on write).
pub fn named(names: &[String]) -> Vec<ToolSpec> {
    catalogue()
        .into_iter()
        .filter(|t| names.iter().any(|n| n == t.name))
        .collect()
}
