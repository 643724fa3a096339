// Flows and triggers: list, enable or disable, a flow's executions with their steps.
import { api, items } from '../api.js';
import { h, mayConfigure, fill, loading, empty, errorBox, badge, timeEl, toast, errorText } from '../ui.js';

export async function render(main, { params, who }) {
  const readOnly = !mayConfigure(who);
  const triggers = h('div', {}, loading('Loading triggers'));
  const flows = h('div', {}, loading('Loading flows'));
  const executions = h('section', { 'aria-label': 'Executions' });
  fill(main, h('h1', {}, 'Automation'),
    h('h2', {}, 'Triggers'), triggers, h('h2', {}, 'Flows'), flows, executions);

  function toggle(kind, thing) {
    const box = h('input', { type: 'checkbox', checked: thing.enabled, disabled: readOnly, 'aria-label': `${thing.name} enabled` });
    box.addEventListener('change', async () => {
      try {
        await api(`${kind}/${thing.id}/toggle`, { method: 'PATCH' });
        toast(`${thing.name} ${box.checked ? 'enabled' : 'disabled'}`);
      } catch (err) { box.checked = !box.checked; toast(errorText(err), 'error'); }
    });
    return box;
  }

  async function showExecutions(flow) {
    fill(executions, h('h2', {}, `Executions of ${flow.name}`), loading('Loading executions'));
    try {
      const runs = items(await api(`flows/${flow.id}/executions?limit=50`));
      fill(executions, h('h2', {}, `Executions of ${flow.name}`), runs.length ? h('ul', { class: 'rows' }, runs.map((r) => {
        const steps = h('div', {});
        const open = h('button', {
          type: 'button', class: 'link',
          onclick: async () => {
            fill(steps, loading('Loading steps'));
            try {
              const ex = await api(`executions/${r.id}`);
              fill(steps, h('ol', { class: 'steps' }, (ex.steps || []).map((s) => h('li', {},
                h('strong', {}, s.step_id || s.id), ' ', badge(s.outcome || s.status || '', s.error ? 'bad' : 'ok'), ' ',
                s.kind ? h('span', { class: 'muted' }, s.kind) : null, ' ', timeEl(s.at || s.started_at || s.created_at),
                s.error ? h('p', { class: 'error-text' }, s.error) : null))));
            } catch (err) { fill(steps, errorBox(err)); }
          },
        }, 'Steps');
        return h('li', {}, badge(r.status, r.status === 'failed' ? 'bad' : r.status === 'completed' ? 'ok' : 'warn'), ' ',
          r.chat || '', ' ', timeEl(r.started_at || r.created_at), ' ', open, steps);
      })) : empty('No execution yet.'));
    } catch (err) {
      fill(executions, errorBox(err));
    }
  }

  try {
    const ts = items(await api('triggers?limit=200'));
    fill(triggers, ts.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Name', 'Event', 'Priority', 'Enabled'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, ts.map((t) => h('tr', {}, h('td', {}, t.name), h('td', {}, t.event), h('td', {}, t.priority), h('td', {}, toggle('triggers', t))))))
      : empty('No trigger yet (create them through the API).'));
  } catch (err) { fill(triggers, errorBox(err)); }
  try {
    const fs = items(await api('flows?limit=200'));
    fill(flows, fs.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Name', 'Steps', 'Enabled', ''].map((c, i) => h('th', { scope: 'col' }, c || h('span', { class: 'sr-only' }, `Column ${i + 1}`))))),
      h('tbody', {}, fs.map((f) => h('tr', {}, h('td', {}, f.name), h('td', {}, (f.steps || []).length), h('td', {}, toggle('flows', f)),
        h('td', {}, h('button', { type: 'button', onclick: () => showExecutions(f) }, 'Executions'))))))
      : empty('No flow yet (create them through the API).'));
    const chosen = fs.find((f) => f.id === params[0]);
    if (chosen) showExecutions(chosen);
  } catch (err) { fill(flows, errorBox(err)); }
  return null;
}
