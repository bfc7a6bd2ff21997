// The TypeScript SDK v2 client (@modelcontextprotocol/client) driving the scripted scenario
// of surface.py against one MCP URL. Usage: node client_v2.mjs PLAN_JSON_FILE
//
// The plan names the URL, the negotiation mode ('legacy' | 'auto' | a pinned version), the
// concrete tool/prompt names and URIs to use (namespaced or not: the plan decides), the
// features to run and a per-feature timeout. Every feature runs on its own fresh client
// (one failure cannot poison the next), all features concurrently, each bounded by the
// timeout: a feature that does not finish in time is reported as a hang, not awaited.
// Prints one JSON object: {"features": {feature: {ok, seconds, era, value | error}}}.
import { readFileSync } from 'node:fs';

import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const LOG_LEVEL_KEY = 'io.modelcontextprotocol/logLevel';
// How long the upstream may take to see a cancellation (directly: ~10 ms).
const CANCEL_SEEN_MS = 3000;

class Hang extends Error {}

function negotiation(mode) {
    return mode === 'legacy' || mode === 'auto' ? { mode } : { mode: { pin: mode } };
}

function describe(error) {
    if (error instanceof Hang) return { type: 'hang', message: error.message };
    const out = { type: error?.constructor?.name ?? typeof error, message: String(error?.message ?? error) };
    if (error?.code !== undefined) out.code = error.code;
    if (error?.data !== undefined) out.data = error.data;
    return out;
}

async function connect(observed) {
    const client = new Client(
        { name: 'edgefleet-peer-test-ts', version: '1.0.0' },
        {
            versionNegotiation: negotiation(plan.mode),
            capabilities: { sampling: {}, elicitation: { form: {} }, roots: {} }
        }
    );
    client.setRequestHandler('sampling/createMessage', async request => {
        observed.sampling = request.params;
        return { role: 'assistant', content: { type: 'text', text: plan.answers.sampling }, model: plan.answers.model };
    });
    client.setRequestHandler('elicitation/create', async request => {
        observed.elicitation = request.params;
        return { action: 'accept', content: { name: plan.answers.name } };
    });
    client.setRequestHandler('roots/list', async () => {
        observed.roots = true;
        return { roots: [{ uri: plan.answers.root, name: 'peer test root' }] };
    });
    client.setNotificationHandler('notifications/message', n => observed.levels.push(n.params.level));
    client.setNotificationHandler('notifications/resources/updated', n => observed.updated.push(n.params.uri));
    await client.connect(new StreamableHTTPClientTransport(new URL(plan.url)));
    return client;
}

const texts = result => (result.content ?? []).filter(c => c.type === 'text').map(c => c.text);
const contents = result =>
    result.contents.map(c => ({ uri: c.uri, mimeType: c.mimeType, text: c.text, blob: c.blob }));

async function waitFor(predicate, what, signal) {
    while (!predicate()) {
        if (signal.aborted) throw new Hang(`gave up waiting for ${what}`);
        await new Promise(r => setTimeout(r, 20));
    }
}

function upstreamSaw(eventName, tag) {
    const needle = `"event":"${eventName}","tag":"${tag}"`;
    try {
        return readFileSync(plan.upstream_log, 'utf8').includes(needle);
    } catch {
        return false;
    }
}

const FEATURES = {
    async tools(c) {
        return (await c.listTools()).tools.map(t => t.name).sort();
    },
    async call(c) {
        return texts(await c.callTool({ name: plan.names.echo, arguments: { text: 'hello' } }));
    },
    async progress(c) {
        const progress = [];
        const result = await c.callTool(
            { name: plan.names.count, arguments: { n: 3 } },
            { onprogress: p => progress.push(p.progress) }
        );
        return { text: texts(result), progress };
    },
    async logging(c, observed) {
        let result;
        if (c.getProtocolEra() === 'legacy') {
            await c.setLoggingLevel('warning');
            result = await c.callTool({ name: plan.names.chatter, arguments: {} });
        } else {
            // 2026: the level is a per-request opt-in in _meta (SEP-2575).
            result = await c.callTool({ name: plan.names.chatter, arguments: {}, _meta: { [LOG_LEVEL_KEY]: 'warning' } });
        }
        return { text: texts(result), levels: observed.levels };
    },
    async sampling(c, observed) {
        const result = await c.callTool({ name: plan.names.ask_sampling, arguments: { question: plan.answers.question } });
        return { text: texts(result), asked: observed.sampling?.messages?.[0]?.content?.text ?? null };
    },
    async elicitation(c, observed) {
        const result = await c.callTool({ name: plan.names.ask_elicitation, arguments: {} });
        return { text: texts(result), asked: observed.elicitation?.message ?? null };
    },
    async roots(c, observed) {
        const result = await c.callTool({ name: plan.names.ask_roots, arguments: {} });
        return { text: texts(result), asked: Boolean(observed.roots) };
    },
    async gated(c) {
        const listed = (await c.listTools()).tools.some(t => t.name === plan.names.gated);
        return { listed, text: texts(await c.callTool({ name: plan.names.gated, arguments: {} })) };
    },
    async cancel(c, _observed, deadline) {
        // Cancel once the upstream reports the call running (its own log line), then report
        // how the client saw the end; the test checks that the upstream saw the cancellation.
        const abort = new AbortController();
        const call = c.callTool({ name: plan.names.slow, arguments: { tag: plan.tag, seconds: 30 } }, { signal: abort.signal });
        const settled = call.then(
            r => ({ result: texts(r) }),
            e => ({ error: describe(e) })
        );
        const started = waitFor(() => upstreamSaw('started', plan.tag), 'the upstream to start the call', deadline).then(() => 'started');
        const first = await Promise.race([started, settled]);
        if (first !== 'started') return { started: false, ...first };
        abort.abort('edgefleet test cancels');
        const ended = await settled;
        // The client is closed after the feature: give the upstream CANCEL_SEEN_MS to see the
        // cancellation first, so a close racing the cancel notification cannot hide it.
        const until = performance.now() + CANCEL_SEEN_MS;
        const seen = await waitFor(() => upstreamSaw('cancelled', plan.tag) || performance.now() > until, 'the cancel', deadline).then(
            () => upstreamSaw('cancelled', plan.tag),
            () => false
        );
        return { started: true, upstream_cancelled: seen, ...ended };
    },
    async resources(c) {
        return (await c.listResources()).resources.map(r => r.uri).sort();
    },
    async read_text(c) {
        return contents(await c.readResource({ uri: plan.uris.text }));
    },
    async read_binary(c) {
        return contents(await c.readResource({ uri: plan.uris.binary }));
    },
    async templates(c) {
        return (await c.listResourceTemplates()).resourceTemplates.map(t => t.uriTemplate).sort();
    },
    async read_template(c) {
        return contents(await c.readResource({ uri: plan.uris.item }));
    },
    async prompts(c) {
        return (await c.listPrompts()).prompts.map(p => ({ name: p.name, arguments: (p.arguments ?? []).map(a => a.name).sort() }));
    },
    async prompt_get(c) {
        const result = await c.getPrompt({ name: plan.names.greet, arguments: { name: 'bob', style: 'formal' } });
        return result.messages.map(m => m.content?.text ?? null);
    },
    async complete_prompt(c) {
        const result = await c.complete({ ref: { type: 'ref/prompt', name: plan.names.greet }, argument: { name: 'name', value: 'al' } });
        return result.completion.values;
    },
    async complete_template(c) {
        const result = await c.complete({ ref: { type: 'ref/resource', uri: plan.uris.template }, argument: { name: 'id', value: '4' } });
        return result.completion.values;
    },
    async unknown_resource(c) {
        try {
            const result = await c.readResource({ uri: plan.uris.missing });
            return { answered: contents(result) };
        } catch (error) {
            return { error: describe(error) };
        }
    },
    async subscribe(c, observed, deadline) {
        let subscription;
        if (c.getProtocolEra() === 'legacy') {
            await c.subscribeResource({ uri: plan.uris.watched });
        } else {
            subscription = await c.listen({ resourceSubscriptions: [plan.uris.watched] });
        }
        // Touch until an update arrives: on 2025 the notification travels on the session's GET
        // stream, which the client opens in the background and may not have open yet.
        while (observed.updated.length === 0) {
            if (deadline.aborted) throw new Hang('no notifications/resources/updated');
            await c.callTool({ name: plan.names.touch, arguments: {} });
            const until = performance.now() + 300;
            await waitFor(() => observed.updated.length > 0 || performance.now() > until, 'an update', deadline);
        }
        await subscription?.close();
        return observed.updated;
    }
};

async function runFeature(name) {
    const started = performance.now();
    const observed = { levels: [], updated: [] };
    const deadline = new AbortController();
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => {
            deadline.abort();
            reject(new Hang(`no answer within ${plan.timeout_s} s`));
        }, plan.timeout_s * 1000);
    });
    let client;
    const work = (async () => {
        client = await connect(observed);
        return FEATURES[name](client, observed, deadline.signal);
    })();
    work.catch(() => {}); // a late rejection after the timeout is expected, not unhandled
    try {
        const value = await Promise.race([work, timeout]);
        return { ok: true, value, era: client?.getNegotiatedProtocolVersion() ?? null, seconds: (performance.now() - started) / 1000 };
    } catch (error) {
        return { ok: false, error: describe(error), era: client?.getNegotiatedProtocolVersion() ?? null, seconds: (performance.now() - started) / 1000 };
    } finally {
        clearTimeout(timer);
        // close() on a client whose call hangs may itself wait: bounded like the rest.
        if (client) await Promise.race([client.close().catch(() => {}), new Promise(r => setTimeout(r, 1000))]);
    }
}

const results = await Promise.all(plan.features.map(async name => [name, await runFeature(name)]));
process.stdout.write(JSON.stringify({ client: 'ts', features: Object.fromEntries(results) }) + '\n');
process.exit(0);
