// Small DOM helpers shared by the pages: element building, dates, errors, toasts.
// The page's CSP forbids inline styles and scripts: everything is built through the DOM.

/** h('button', {class: 'x', onclick: f}, 'Text', child…) → an element. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (['value', 'checked', 'disabled', 'selected', 'hidden'].includes(key)) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const NS = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// Dates are shown in the browser's time zone: the member's own.
export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' });

export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeOnly.format(d) : dateTime.format(d);
}

export function timeEl(iso) {
  return iso ? h('time', { datetime: iso, title: dateTime.format(new Date(iso)) }, when(iso)) : '';
}

/** The message of an API error body (or of anything thrown). */
export function errorText(err) {
  if (err && err.code) return `${err.message} (${err.code})`;
  return (err && err.message) || String(err);
}

export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, errorText(err));
}

export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  if (!box) return;
  const t = h('div', { class: `toast ${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

export function loading(what = 'Loading') {
  return h('p', { class: 'loading', role: 'status' }, `${what}…`);
}

export function empty(text) {
  return h('p', { class: 'empty' }, text);
}

/** Runs `work` with the button showing progress; errors become a toast. */
export async function busy(button, label, work) {
  const before = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.textContent = label;
  try {
    return await work();
  } catch (err) {
    toast(errorText(err), 'error');
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = before;
  }
}

/** Whether the logged-in caller may change things (a viewer and a read-only key read only). */
export function mayChange(who) {
  return who.role !== 'viewer' && who.role !== 'read_only';
}

/** Whether they may configure the tenant (agents, automation, webhooks): owners and admins. */
export function mayConfigure(who) {
  return ['owner', 'admin'].includes(who.role);
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    hint ? h('small', {}, hint) : null);
}

/** Calls `fn` at most once per `ms`, with the last arguments. */
export function debounce(fn, ms = 150) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function badge(text, kind = '') {
  return h('span', { class: `badge ${kind}` }, text);
}

/** Announces `text` to screen readers (the page's polite live region). */
export function announce(text) {
  const region = document.getElementById('announcer');
  if (region) region.textContent = text;
}
