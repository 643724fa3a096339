// Chats: a session's chats with unread counts; a conversation with live messages, sending
// text and quick replies, the bot switch, the chat's agent and its linked cards.
import { api, items } from '../api.js';
import { h, mayChange, fill, field, busy, loading, empty, errorBox, badge, timeEl, debounce, toast, errorText } from '../ui.js';

export async function render(main, { live, params, navigate, who }) {
  const readOnly = !mayChange(who);
  let sessions;
  try {
    sessions = items(await api('sessions?limit=200'));
  } catch (err) {
    fill(main, h('h1', {}, 'Chats'), errorBox(err));
    return null;
  }
  if (!sessions.length) {
    fill(main, h('h1', {}, 'Chats'), empty('No session yet: create one on the Sessions page.'));
    return null;
  }
  const sessionId = params[0] && sessions.some((s) => s.id === params[0]) ? params[0] : sessions[0].id;
  const chat = params[1] || null;
  const picker = h('select', {
    onchange: () => navigate(`#/chats/${picker.value}`),
  }, sessions.map((s) => h('option', { value: s.id, selected: s.id === sessionId }, `${s.name} (${s.status})`)));
  const chatList = h('ul', { class: 'chat-list', 'aria-label': 'Chats' }, h('li', {}, loading('Loading chats')));
  const convo = h('section', { class: 'conversation', 'aria-label': 'Conversation' },
    chat ? loading('Loading the conversation') : empty('Pick a chat.'));
  fill(main, h('h1', {}, 'Chats'), field('Session', picker),
    h('div', { class: `chats-layout ${chat ? 'has-chat' : ''}` }, h('nav', { class: 'chat-nav', 'aria-label': 'Chat list' }, chatList), convo));

  async function loadChats() {
    try {
      const chats = items(await api(`sessions/${sessionId}/chats?limit=100`));
      fill(chatList, chats.length ? chats.map((c) => h('li', {},
        h('a', {
          href: `#/chats/${sessionId}/${encodeURIComponent(c.chat)}`,
          class: 'chat-item', 'aria-current': c.chat === chat ? 'page' : null, dataset: { chat: c.chat },
        },
        h('span', { class: 'chat-name' }, c.contact_name || c.chat),
        c.unread_count ? badge(String(c.unread_count), 'unread') : null,
        h('span', { class: 'chat-last' }, (c.last_message && (c.last_message.text || `[${c.last_message.type}]`)) || ''),
        timeEl(c.last_message_at))))
        : h('li', {}, empty('No chat yet: when a contact writes, it appears here.')));
      chatList.querySelectorAll('.unread').forEach((b) => b.setAttribute('aria-label', `${b.textContent} unread`));
    } catch (err) {
      fill(chatList, h('li', {}, errorBox(err)));
    }
  }

  const messages = h('ol', { class: 'messages', 'aria-live': 'polite', 'aria-label': 'Messages' });
  async function loadMessages() {
    const page = items(await api(`sessions/${sessionId}/messages?chat=${encodeURIComponent(chat)}&limit=100`));
    const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
    fill(messages, page.length ? page.slice().reverse().map((m) => h('li', { class: `msg ${m.direction}`, dataset: { id: m.id } },
      h('p', { class: 'msg-text' }, m.text || `[${m.type}]`),
      h('span', { class: 'msg-meta' }, timeEl(m.created_at), m.direction === 'out' ? ` · ${m.status}` : '')))
      : h('li', {}, empty('No message yet.')));
    if (atBottom || !messages.dataset.loaded) messages.scrollTop = messages.scrollHeight;
    messages.dataset.loaded = '1';
  }

  async function openChat() {
    let detail;
    try {
      [detail] = await Promise.all([api(`sessions/${sessionId}/chats/${encodeURIComponent(chat)}`), loadMessages()]);
    } catch (err) {
      fill(convo, errorBox(err));
      return;
    }
    // Opening the chat reads it.
    if (!readOnly && detail.unread_count) {
      api(`sessions/${sessionId}/chats/${encodeURIComponent(chat)}`, { method: 'PATCH', body: { read: true } })
        .then(loadChats).catch(() => {});
    }
    const text = h('textarea', { name: 'text', rows: '2', required: true, maxlength: '4096', placeholder: 'Write a reply' });
    const send = h('button', { type: 'submit', class: 'primary' }, 'Send');
    const form = h('form', {
      class: 'composer', hidden: readOnly,
      onsubmit: (ev) => {
        ev.preventDefault();
        if (!text.value.trim()) return;
        busy(send, 'Sending…', async () => {
          await api(`sessions/${sessionId}/messages`, {
            method: 'POST',
            headers: { 'Idempotency-Key': crypto.randomUUID() },
            body: { to: chat, type: 'text', text: text.value },
          });
          text.value = '';
          await loadMessages();
        });
      },
    }, field('Reply', text), send);
    text.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
    });

    const quick = h('select', { name: 'quick_reply' }, h('option', { value: '' }, 'Quick reply…'));
    api('quick-replies?limit=100').then((qs) => {
      for (const q of items(qs).filter((q) => q.enabled)) quick.append(h('option', { value: q.id }, `${q.shortcut} — ${q.title}`));
    }).catch(() => {});
    const sendQuick = h('button', { type: 'button' }, 'Send quick reply');
    sendQuick.addEventListener('click', () => {
      if (!quick.value) { toast('Pick a quick reply first', 'error'); return; }
      busy(sendQuick, 'Sending…', async () => {
        await api(`sessions/${sessionId}/messages`, {
          method: 'POST',
          headers: { 'Idempotency-Key': crypto.randomUUID() },
          body: { to: chat, type: 'quick_reply', quick_reply_id: quick.value, variables: { name: detail.contact_name || '' } },
        });
        await loadMessages();
      });
    });

    const bot = h('input', { type: 'checkbox', checked: detail.bot_enabled, disabled: readOnly });
    bot.addEventListener('change', async () => {
      try {
        await api(`sessions/${sessionId}/chats/${encodeURIComponent(chat)}`, { method: 'PATCH', body: { bot_enabled: bot.checked } });
        toast(bot.checked ? 'The bot answers this chat' : 'The bot is off for this chat');
      } catch (err) { bot.checked = !bot.checked; toast(errorText(err), 'error'); }
    });
    const agent = h('select', { disabled: readOnly }, h('option', { value: '' }, "The session's agent"));
    api('agents?limit=100').then((as) => {
      for (const a of items(as)) agent.append(h('option', { value: a.id, selected: a.id === detail.agent_id }, a.name));
    }).catch(() => {});
    agent.addEventListener('change', async () => {
      try {
        await api(`sessions/${sessionId}/chats/${encodeURIComponent(chat)}`, { method: 'PATCH', body: { agent_id: agent.value || null } });
        toast('Agent changed');
      } catch (err) { toast(errorText(err), 'error'); }
    });
    const cards = (detail.cards || []);
    fill(convo,
      h('header', { class: 'convo-head' },
        h('a', { class: 'back', href: `#/chats/${sessionId}` }, '← Chats'),
        h('h2', {}, detail.contact_name || chat), detail.contact_name ? h('span', { class: 'muted' }, chat) : null),
      h('div', { class: 'convo-tools' },
        h('label', { class: 'switch' }, bot, ' Bot answers'),
        field('Agent', agent),
        cards.length ? h('p', {}, 'Cards: ', cards.map((c) => h('a', { href: `#/board/${c.board_id}`, class: 'chip' }, c.title))) : null),
      messages, form,
      h('div', { class: 'quick', hidden: readOnly }, field('Quick replies', quick), sendQuick));
  }

  const reloadChats = debounce(loadChats, 200);
  // A message arriving in the open chat is read as it shows.
  const markRead = debounce(() => {
    api(`sessions/${sessionId}/chats/${encodeURIComponent(chat)}`, { method: 'PATCH', body: { read: true } })
      .then(loadChats).catch(() => {});
  }, 300);
  const reloadMessages = debounce(() => loadMessages().catch((err) => toast(errorText(err), 'error')), 150);
  await loadChats();
  if (chat) await openChat();
  return live.on((e) => {
    if (e.session_id !== sessionId) return;
    if (e.type === 'message.received' || e.type === 'message.status' || e.type === 'message.sent') {
      reloadChats();
      if (chat && (!e.data || !e.data.chat || e.data.chat === chat)) {
        reloadMessages();
        if (e.type === 'message.received' && !readOnly) markRead();
      }
    }
  });
}
