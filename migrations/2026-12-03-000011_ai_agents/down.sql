DROP TABLE prompts;
DROP TABLE prompt_sessions;
DROP TABLE ai_calls;
DROP TABLE ai_pending;
DROP TABLE chat_agents;
DROP TABLE session_agents;
DROP TABLE ai_agents;
DROP TABLE ai_credentials;
