#!/usr/bin/env node
/*
 * Contender: Node.js with the vendor's signer, AKSKSigner.sign from
 * @huaweicloud/huaweicloud-sdk-core, over an http.Agent with keep-alive
 * and one socket. Each request is signed anew (X-Sdk-Date, host,
 * Authorization), sent, and its JSON body parsed.
 *
 *   node bench/node_client.js URL REQUESTS FILE_NAME [CA_FILE]
 *
 * NODE_SDK_DIR is a folder whose node_modules contains the package.
 * Credentials come from APPCENTER_AK, APPCENTER_SK and
 * APPCENTER_PROJECT_ID. Speaks the contender protocol of bench/run.py
 * (see bench/contender.lua).
 */
'use strict';

const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');
const { createRequire } = require('module');

const PACKAGE = '@huaweicloud/huaweicloud-sdk-core';

function loadSdk(directory) {
  const requireFromDir = createRequire(path.join(path.resolve(directory), 'index.js'));
  return {
    AKSKSigner: requireFromDir(`${PACKAGE}/auth/AKSKSigner`).AKSKSigner,
    BasicCredentials: requireFromDir(PACKAGE).BasicCredentials,
  };
}

function post(url, agent, headers, body) {
  const transport = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const request = transport.request(url, { method: 'POST', agent, headers }, (response) => {
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => resolve({
        status: response.statusCode,
        requestId: response.headers['x-request-id'],
        text: Buffer.concat(chunks).toString('utf8'),
      }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

function checkCredential(decoded) {
  const credential = decoded && decoded.credential;
  if (!credential || typeof credential.security_token !== 'string'
      || typeof credential.access !== 'string' || typeof credential.secret !== 'string'
      || typeof decoded.object_path !== 'string') {
    throw new Error('credential fields are not strings');
  }
}

async function main() {
  const [endpoint, countText, fileName, caFile] = process.argv.slice(2);
  const requests = Number(countText);
  if (!endpoint || !Number.isInteger(requests) || !fileName) {
    process.stderr.write('usage: node_client.js URL REQUESTS FILE_NAME [CA_FILE]\n');
    process.exit(2);
  }
  const sdk = loadSdk(process.env.NODE_SDK_DIR || '/tmp/bench-node');
  const credential = new sdk.BasicCredentials()
    .withAk(process.env.APPCENTER_AK)
    .withSk(process.env.APPCENTER_SK);
  const projectId = process.env.APPCENTER_PROJECT_ID;
  const url = new URL(endpoint);
  const agentOptions = { keepAlive: true, maxSockets: 1 };
  if (caFile && caFile !== '-') agentOptions.ca = fs.readFileSync(caFile);
  const agent = url.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
  const data = { file_name: fileName };

  process.stdout.write('ready\n');
  let ok = 0;
  let error = '';
  for (let i = 1; i <= requests; i++) {
    try {
      const signed = sdk.AKSKSigner.sign({
        method: 'POST',
        endpoint,
        headers: { 'Content-Type': 'application/json', 'X-Project-Id': projectId },
        queryParams: {},
        data,
      }, credential);
      const response = await post(url, agent, signed, JSON.stringify(data));
      if (response.status !== 200) throw new Error(`status ${response.status}`);
      checkCredential(JSON.parse(response.text));
      ok++;
    } catch (err) {
      error = `request ${i}: ${err.message}`;
      break;
    }
  }
  process.stdout.write(`done ${ok}\n` + (error ? `${error}\n` : ''));
  agent.destroy();
  process.exitCode = ok === requests ? 0 : 1;
}

main();
