// AI agents: list, create, edit, try one in a test chat, its figures.
import { api, items } from '../api.js';
import { h, mayConfigure, fill, field, busy, loading, empty, errorBox, badge, errorText } from '../ui.js';

export async function render(main, { who }) {
  const readOnly = !mayConfigure(who);
  const list = h('div', { class: 'grid' }, loading('Loading agents'));
  const editor = h('section', { class: 'card', 'aria-label': 'Agent editor', hidden: readOnly });
  fill(main, h('h1', {}, 'Agents'), editor, list);

  function form(agent) {
    const name = h('input', { type: 'text', required: true, value: agent ? agent.name : '' });
    const provider = h('select', {}, ['gemini', 'openai'].map((p) => h('option', { value: p, selected: agent && agent.provider === p }, p)));
    const model = h('input', { type: 'text', required: true, value: agent ? agent.model : 'gemini-2.5-flash' });
    const prompt = h('textarea', { rows: '5', required: true }, '');
    prompt.value = agent ? agent.system_prompt || '' : 'You answer the customers of our shop, kindly and briefly.';
    const save = h('button', { type: 'submit', class: 'primary' }, agent ? 'Save changes' : 'Create agent');
    return h('form', {
      onsubmit: (ev) => {
        ev.preventDefault();
        busy(save, 'Saving…', async () => {
          const body = { name: name.value.trim(), provider: provider.value, model: model.value.trim(), system_prompt: prompt.value };
          if (agent) await api(`agents/${agent.id}`, { method: 'PATCH', body });
          else await api('agents', { method: 'POST', body });
          fill(editor, h('h2', {}, 'New agent'), form(null));
          await load();
        });
      },
    }, field('Name', name), field('Provider', provider), field('Model', model), field('Instructions', prompt), save,
    agent ? h('button', { type: 'button', onclick: () => fill(editor, h('h2', {}, 'New agent'), form(null)) }, 'Cancel') : null);
  }

  function tryBox(agent) {
    const out = h('div', { class: 'try-out', 'aria-live': 'polite' });
    const text = h('input', { type: 'text', placeholder: 'Hello, do you open on Sundays?', required: true });
    const go = h('button', { type: 'submit' }, 'Try');
    return h('form', {
      class: 'inline-form',
      onsubmit: (ev) => {
        ev.preventDefault();
        out.textContent = '';
        busy(go, 'Thinking…', async () => {
          try {
            const r = await api('ai/generate', { method: 'POST', body: { agent_id: agent.id, text: text.value } });
            fill(out, h('p', { class: 'msg out' }, r.text), h('small', { class: 'muted' }, `${r.prompt_tokens} + ${r.output_tokens} tokens`));
          } catch (err) {
            fill(out, errorBox(err));
          }
        });
      },
    }, field(`Test chat with ${agent.name}`, text), go, out);
  }

  async function statsOf(agent, box) {
    try {
      const s = await api(`agents/${agent.id}/stats`);
      fill(box, h('dl', { class: 'facts' },
        h('dt', {}, 'Replies'), h('dd', {}, s.replies),
        h('dt', {}, 'Errors'), h('dd', {}, s.errors),
        h('dt', {}, 'Handoffs'), h('dd', {}, s.handoffs),
        h('dt', {}, 'Tokens'), h('dd', {}, `${s.prompt_tokens} in, ${s.output_tokens} out`),
        h('dt', {}, 'Latency p50'), h('dd', {}, s.latency_ms_p50 === null || s.latency_ms_p50 === undefined ? '—' : `${s.latency_ms_p50} ms`)));
    } catch (err) {
      fill(box, errorBox(err));
    }
  }

  async function load() {
    try {
      const agents = items(await api('agents?limit=100'));
      fill(list, agents.length ? agents.map((a) => {
        const stats = h('div', {}, loading('Loading figures'));
        statsOf(a, stats);
        return h('article', { class: 'card' },
          h('header', {}, h('h2', {}, a.name), badge(`${a.provider} · ${a.model}`)),
          stats,
          readOnly ? null : h('button', { type: 'button', onclick: () => { fill(editor, h('h2', {}, `Edit ${a.name}`), form(a)); editor.scrollIntoView(); } }, 'Edit'),
          tryBox(a));
      }) : empty('No agent yet: create one above, then switch it on for a session or a chat.'));
    } catch (err) {
      fill(list, errorBox(err));
    }
  }
  fill(editor, h('h2', {}, 'New agent'), form(null));
  await load();
  return null;
}
