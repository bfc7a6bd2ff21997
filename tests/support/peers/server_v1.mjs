// A 2025-11-25-only MCP server on the TypeScript SDK v1 (@modelcontextprotocol/sdk@1), the
// most common server in the wild: sessionful streamable HTTP (the SDK's documented wiring),
// so the server can send sampling/elicitation requests on a call's own SSE stream.
//
// The surface (same names and behaviour as server_v2.mjs, see surface.py):
//   tools      echo, count (progress), chatter (logging), ask_sampling, ask_elicitation,
//              ask_roots, slow (cancellable), touch (updates the watched resource), and
//              gated: listed only to sessions whose client declared sampling, as servers
//              in the wild gate tools on client capabilities
//   resources  peer://static/text, peer://static/binary, peer://watched (subscribable),
//              template peer://items/{id}
//   prompts    greet(name, style?) with completions on `name`; completions on {id}
//
// Events the tests wait on are printed as single lines `PEER {json}` on stdout; the first
// line is `PEER {"event":"ready","port":N}` once it listens (port 0: the OS picks).
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import { completable } from '@modelcontextprotocol/sdk/server/completable.js';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
    CreateMessageResultSchema,
    ElicitResultSchema,
    isInitializeRequest,
    ListRootsResultSchema
} from '@modelcontextprotocol/sdk/types.js';
import * as z from 'zod';

const NAMES = ['alice', 'albert', 'bob'];
const ITEM_IDS = ['1', '2', '42'];
const BINARY = Buffer.from([0, 1, 2, 253, 254, 255]).toString('base64');
const LEVELS = ['debug', 'info', 'warning', 'error'];

function event(fields) {
    process.stdout.write(`PEER ${JSON.stringify(fields)}\n`);
}

let watched = 0; // state of peer://watched, shared by every session
const sessions = new Map(); // session id -> {transport, server, subscriptions}

const text = value => ({ content: [{ type: 'text', text: value }] });
const sleep = (ms, signal) =>
    new Promise(resolve => {
        const timer = setTimeout(resolve, ms);
        signal?.addEventListener('abort', () => {
            clearTimeout(timer);
            resolve();
        });
    });

function buildServer(subscriptions, clientCapabilities) {
    const mcp = new McpServer(
        { name: 'peer-v1', version: '1.0.0' },
        { capabilities: { logging: {}, resources: { subscribe: true, listChanged: true }, completions: {} } }
    );

    mcp.registerTool('echo', { description: 'Echo the text', inputSchema: { text: z.string() } }, async ({ text: t }) =>
        text(`echo: ${t}`)
    );

    mcp.registerTool(
        'count',
        { description: 'Count to n, one progress notification per step', inputSchema: { n: z.number().int().min(1).max(20) } },
        async ({ n }, extra) => {
            const token = extra._meta?.progressToken;
            for (let i = 1; i <= n; i++) {
                if (token !== undefined) {
                    await extra.sendNotification({
                        method: 'notifications/progress',
                        params: { progressToken: token, progress: i, total: n, message: `step ${i}/${n}` }
                    });
                }
                await sleep(10);
            }
            return text(`counted ${n}`);
        }
    );

    mcp.registerTool('chatter', { description: 'Log one message at each of debug, info, warning, error' }, async extra => {
        for (const level of LEVELS) {
            // Request-related so it travels on the call's stream; filtered by the session's
            // logging/setLevel, as the SDK's own sendLoggingMessage does.
            if (!mcp.server.isMessageIgnored(level, extra.sessionId)) {
                await extra.sendNotification({ method: 'notifications/message', params: { level, logger: 'peer', data: `chatter ${level}` } });
            }
        }
        return text('chattered');
    });

    mcp.registerTool(
        'ask_sampling',
        { description: 'Ask the client LLM a question (sampling/createMessage)', inputSchema: { question: z.string() } },
        async ({ question }, extra) => {
            const answer = await extra.sendRequest(
                {
                    method: 'sampling/createMessage',
                    params: { messages: [{ role: 'user', content: { type: 'text', text: question } }], maxTokens: 50 }
                },
                CreateMessageResultSchema
            );
            const content = Array.isArray(answer.content) ? answer.content[0] : answer.content;
            return text(`sampled: ${content?.type === 'text' ? content.text : '?'} (model ${answer.model})`);
        }
    );

    mcp.registerTool('ask_elicitation', { description: 'Ask the user for a name (elicitation/create)' }, async extra => {
        const answer = await extra.sendRequest(
            {
                method: 'elicitation/create',
                params: {
                    mode: 'form',
                    message: 'What is your name?',
                    requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] }
                }
            },
            ElicitResultSchema
        );
        return text(`elicited: ${answer.action} ${answer.content?.name ?? ''}`.trim());
    });

    mcp.registerTool('ask_roots', { description: 'Ask the client for its roots (roots/list)' }, async extra => {
        const answer = await extra.sendRequest({ method: 'roots/list', params: {} }, ListRootsResultSchema);
        return text(`roots: ${answer.roots.map(r => r.uri).join(' ')}`);
    });

    if (clientCapabilities?.sampling) {
        mcp.registerTool('gated', { description: 'Only for clients that declared sampling' }, async () =>
            text('gated: for clients with sampling')
        );
    }

    mcp.registerTool(
        'slow',
        { description: 'Run until cancelled (at most `seconds`)', inputSchema: { tag: z.string(), seconds: z.number().max(60) } },
        async ({ tag, seconds }, extra) => {
            event({ event: 'started', tag });
            extra.signal.addEventListener('abort', () => event({ event: 'cancelled', tag }));
            await sleep(seconds * 1000, extra.signal);
            if (!extra.signal.aborted) event({ event: 'finished', tag });
            return text(extra.signal.aborted ? `cancelled ${tag}` : `finished ${tag}`);
        }
    );

    mcp.registerTool('touch', { description: 'Change peer://watched and notify its subscribers' }, async () => {
        watched += 1;
        for (const entry of sessions.values()) {
            if (entry.subscriptions.has('peer://watched')) {
                await entry.server.server.sendResourceUpdated({ uri: 'peer://watched' });
            }
        }
        return text(`watched ${watched}`);
    });

    mcp.registerResource('static-text', 'peer://static/text', { mimeType: 'text/plain', description: 'Fixed text' }, async uri => ({
        contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'static text from peer-v1' }]
    }));
    mcp.registerResource(
        'static-binary',
        'peer://static/binary',
        { mimeType: 'application/octet-stream', description: 'Six fixed bytes' },
        async uri => ({ contents: [{ uri: uri.href, mimeType: 'application/octet-stream', blob: BINARY }] })
    );
    mcp.registerResource('watched', 'peer://watched', { mimeType: 'text/plain', description: 'Changed by the touch tool' }, async uri => ({
        contents: [{ uri: uri.href, mimeType: 'text/plain', text: `watched ${watched}` }]
    }));
    mcp.registerResource(
        'item',
        new ResourceTemplate('peer://items/{id}', {
            list: undefined,
            complete: { id: value => ITEM_IDS.filter(id => id.startsWith(value)) }
        }),
        { mimeType: 'text/plain', description: 'One item by id' },
        async (uri, { id }) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: `item ${id}` }] })
    );

    mcp.registerPrompt(
        'greet',
        {
            description: 'Greet someone',
            argsSchema: {
                name: completable(z.string(), value => NAMES.filter(n => n.startsWith(value))),
                style: z.string().optional()
            }
        },
        async ({ name, style }) => ({
            messages: [{ role: 'user', content: { type: 'text', text: `Greet ${name} in a ${style ?? 'plain'} style.` } }]
        })
    );

    // resources/subscribe bookkeeping is the application's (the SDK only routes the methods).
    mcp.server.setRequestHandler(
        z.object({ method: z.literal('resources/subscribe'), params: z.object({ uri: z.string() }).passthrough() }),
        async request => {
            subscriptions.add(request.params.uri);
            event({ event: 'subscribed', uri: request.params.uri });
            return {};
        }
    );
    mcp.server.setRequestHandler(
        z.object({ method: z.literal('resources/unsubscribe'), params: z.object({ uri: z.string() }).passthrough() }),
        async request => {
            subscriptions.delete(request.params.uri);
            return {};
        }
    );
    return mcp;
}

async function readBody(req) {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const raw = Buffer.concat(chunks).toString('utf8');
    return raw ? JSON.parse(raw) : undefined;
}

function jsonError(res, status, code, message) {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

const http = createServer((req, res) => {
    void (async () => {
        if (new URL(req.url, 'http://x').pathname !== '/mcp') return jsonError(res, 404, -32601, 'Not found');
        const body = req.method === 'POST' ? await readBody(req) : undefined;
        const sid = req.headers['mcp-session-id'];
        const existing = sid ? sessions.get(sid) : undefined;
        if (existing) return existing.transport.handleRequest(req, res, body);
        if (sid) return jsonError(res, 404, -32001, 'Session not found');
        if (req.method === 'POST' && isInitializeRequest(body)) {
            const subscriptions = new Set();
            const server = buildServer(subscriptions, body.params?.capabilities ?? {});
            const transport = new StreamableHTTPServerTransport({
                sessionIdGenerator: () => randomUUID(),
                onsessioninitialized: id => {
                    sessions.set(id, { transport, server, subscriptions });
                    event({ event: 'session', id, capabilities: body.params?.capabilities ?? {} });
                }
            });
            transport.onclose = () => transport.sessionId && sessions.delete(transport.sessionId);
            await server.connect(transport);
            return transport.handleRequest(req, res, body);
        }
        // What the SDK's documented wiring answers for anything else without a session,
        // including a 2026-07-28 server/discover: this server is 2025-only.
        event({ event: 'refused', method: body?.method ?? req.method, version: req.headers['mcp-protocol-version'] ?? null });
        return jsonError(res, 400, -32000, 'Bad Request: No valid session ID provided');
    })().catch(error => {
        event({ event: 'error', message: String(error?.stack ?? error) });
        if (!res.headersSent) jsonError(res, 500, -32603, 'Internal error');
    });
});

http.listen(0, '127.0.0.1', () => event({ event: 'ready', port: http.address().port, sdk: 'v1' }));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
