// Log in: a member's email and password, or a key (the admin key, or a tenant's API key).
import { api } from '../api.js';
import { h, field, errorText } from '../ui.js';

export function render(root, { onLogin }) {
  const message = sessionStorage.getItem('wagate.loginMessage');
  sessionStorage.removeItem('wagate.loginMessage');
  const error = h('p', { class: 'error', role: 'alert', hidden: !message }, message || '');
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const tenant = h('input', { type: 'text', name: 'tenant_id', autocomplete: 'off', placeholder: 'only if your email is in several tenants' });
  const key = h('input', { type: 'password', name: 'api_key', autocomplete: 'off' });
  let mode = 'member';

  const memberFields = h('div', {}, field('Email', email), field('Password', password), field('Tenant id', tenant));
  const keyFields = h('div', { hidden: true }, field('Admin key or API key', key, 'Admins log in with the admin key.'));
  const tabMember = h('button', { type: 'button', role: 'tab', 'aria-selected': 'true', onclick: () => choose('member') }, 'Member');
  const tabKey = h('button', { type: 'button', role: 'tab', 'aria-selected': 'false', onclick: () => choose('key') }, 'Key');
  function choose(m) {
    mode = m;
    tabMember.setAttribute('aria-selected', String(m === 'member'));
    tabKey.setAttribute('aria-selected', String(m === 'key'));
    memberFields.hidden = m !== 'member';
    keyFields.hidden = m !== 'key';
    email.required = password.required = m === 'member';
    key.required = m === 'key';
  }
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', {
    class: 'login card', novalidate: false,
    onsubmit: async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      submit.disabled = true;
      submit.textContent = 'Logging in…';
      const body = mode === 'member'
        ? { email: email.value, password: password.value, ...(tenant.value.trim() ? { tenant_id: tenant.value.trim() } : {}) }
        : { api_key: key.value };
      try {
        const who = await api('/dashboard/login', { method: 'POST', body });
        await onLogin(who);
      } catch (err) {
        error.textContent = errorText(err);
        error.hidden = false;
      } finally {
        submit.disabled = false;
        submit.textContent = 'Log in';
      }
    },
  },
  h('h1', {}, 'wagate'),
  h('p', { class: 'muted' }, 'Log in to your WhatsApp gateway.'),
  h('div', { role: 'tablist', class: 'tabs', 'aria-label': 'How to log in' }, tabMember, tabKey),
  error, memberFields, keyFields, submit);
  root.append(h('main', { class: 'login-page' }, form));
  email.focus();
}
