// relaybus: the worker (Container App holding the platform sockets) publishes to Service Bus queues, the
// function app (Flex Consumption) runs the bot logic. No connection strings, no secrets in app settings:
// every service is reached with a user-assigned identity and least-privilege roles, secrets are Key Vault
// references.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json \
//     -p slackAppToken=$SLACK_APP_TOKEN slackBotToken=$SLACK_BOT_TOKEN [workerImageTag=<tag>]
//
// The queue list comes from queues.json, generated from shared/routes.py (`python -m worker infra
// generate`; a test fails when it is stale). See docs/deploy.md.

targetScope = 'resourceGroup'

@description('Prefix of every resource name (letters, digits and hyphens).')
@minLength(3)
@maxLength(12)
param baseName string = 'relaybus'

@description('Azure region (Flex Consumption must be available there).')
param location string = resourceGroup().location

@description('Tags for every resource.')
param tags object = {}

@description('Service Bus tier: Standard, or Premium for larger messages and isolation.')
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('Messaging units when serviceBusSku is Premium.')
@allowed([
  1
  2
  4
  8
  16
])
param serviceBusPremiumCapacity int = 1

@description('Function app role on each queue. Owner (Data Owner scoped to each queue) lets the scale controller read queue length; Receiver (Data Receiver) is narrower but scales without it. See docs/deploy.md.')
@allowed([
  'Owner'
  'Receiver'
])
param functionQueueRole string = 'Owner'

@description('Flex Consumption instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param functionInstanceMemoryMB int = 2048

@description('Flex Consumption maximum instance count (per function).')
@minValue(1)
@maxValue(1000)
param functionMaximumInstanceCount int = 40

@description('Always-ready instances per function (route name), for example {"slack_interactive": 1}.')
param alwaysReadyInstances object = {}

@description('Connect Slack (worker: SLACK_APP_TOKEN; functions: SLACK_BOT_TOKEN).')
param enableSlack bool = true

@description('Slack app-level token (xapp-, connections:write). Written to Key Vault when given; empty keeps the stored value.')
@secure()
param slackAppToken string = ''

@description('Slack bot token (xoxb-). Written to Key Vault when given; empty keeps the stored value.')
@secure()
param slackBotToken string = ''

@description('Slack Socket Mode connections per worker replica (Slack allows 10 per app).')
@minValue(1)
@maxValue(10)
param slackConnections int = 2

@description('Slack Web API base URL.')
param slackApiUrl string = 'https://slack.com/api/'

@description('Several Slack apps in one deployment (RELAYBUS_SLACK_APPS), each {"name": "sales", "connections": 2} (lower-case names; connections optional, default slackConnections). Empty: the single app of slackAppToken/slackBotToken. Each app\'s tokens are the Key Vault secrets slack-app-token-<name> (worker) and slack-bot-token-<name> (functions).')
param slackApps array = []

@description('Tokens of slackApps, by app name: {"sales": {"appToken": "xapp-...", "botToken": "xoxb-..."}}. Written to Key Vault when given; an app left out keeps its stored values.')
@secure()
param slackAppTokens object = {}

@description('Connect Teams (worker: TEAMS_APP_ID and TEAMS_APP_PASSWORD; functions: the same to reply).')
param enableTeams bool = false

@description('Bot (Entra app registration) id.')
param teamsAppId string = ''

@description('Entra tenant id of the single-tenant bot.')
param teamsTenantId string = ''

@description('Bot client secret. Written to Key Vault when given; empty keeps the stored value.')
@secure()
param teamsAppPassword string = ''

@description('Several Teams bots in one deployment (RELAYBUS_TEAMS_BOTS), each {"name": "support", "appId": "...", "tenantId": "..."} (lower-case names). Empty: the single bot of teamsAppId. Each bot\'s client secret is the Key Vault secret teams-app-password-<name> (worker and functions).')
param teamsBots array = []

@description('Client secrets of teamsBots, by bot name: {"support": "..."}. Written to Key Vault when given; a bot left out keeps its stored value.')
@secure()
param teamsBotPasswords object = {}

@description('Teams socket mode ring: production (botapi.skype.com), canary or pilot.')
@allowed([
  'production'
  'canary'
  'pilot'
])
param teamsRing string = 'production'

@description('Teams geos to hold a socket in, comma separated (amer, emea, apac).')
param teamsGeos string = 'amer'

@description('Hold a Direct Line bot\'s conversations in the worker (DIRECTLINE_SECRET; see docs/directline.md).')
param enableDirectLine bool = false

@description('Direct Line channel secret. Written to Key Vault when given; empty keeps the stored value.')
@secure()
param directLineSecret string = ''

@description('Direct Line endpoint: https://<region>.directline.botframework.com/v3/directline for a regional bot.')
param directLineBaseUrl string = 'https://directline.botframework.com/v3/directline'

@description('The Direct Line conversation directory table (leases, watermarks), in the function app\'s storage account.')
param directLineTableName string = 'relaybusdirectline'

@description('Tag of the worker image in the registry. Empty: the worker is not deployed yet (first run, before `az acr build`).')
param workerImageTag string = ''

@description('Repository of the worker image in the registry.')
param workerImageRepository string = 'relaybus-worker'

@description('Worker replicas. At least 1: a worker scaled to zero holds no socket.')
@minValue(1)
@maxValue(3)
param workerReplicas int = 1

@description('vCPU per worker replica.')
param workerCpu string = '0.5'

@description('Memory per worker replica.')
param workerMemory string = '1Gi'

@description('Worker log level.')
@allowed([
  'DEBUG'
  'INFO'
  'WARNING'
  'ERROR'
])
param workerLogLevel string = 'INFO'

@description('Container registry SKU.')
@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string = 'Basic'

@description('Key Vault purge protection (cannot be turned off again).')
param keyVaultPurgeProtection bool = true

@description('Name of the state table in the storage account of the function app (functions.state).')
@minLength(3)
@maxLength(63)
param stateTableName string = 'relaybusstate'

@description('Days Log Analytics keeps data.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Live updates (functions.live): an Azure SignalR Service in serverless mode, the negotiate function and the live page.')
param enableLive bool = false

@description('SignalR Service SKU (Free_F1: 20 connections, for trying it; Standard_S1 for production).')
@allowed([
  'Free_F1'
  'Standard_S1'
  'Premium_P1'
])
param signalrSku string = 'Standard_S1'

@description('SignalR Service units (1,000 concurrent connections each).')
@minValue(1)
@maxValue(100)
param signalrCapacity int = 1

@description('Audience of the live page users\' bearer tokens (RELAYBUS_LIVE_AUDIENCE: the app registration\'s client id or api://… URI). Required with enableLive.')
param liveAudience string = ''

@description('Comma-separated tenant ids allowed on the live page (RELAYBUS_LIVE_TENANTS); empty: any tenant whose token validates.')
param liveTenants string = ''

@description('Browser origins the SignalR Service accepts (CORS); the page authenticates with a bearer token, not cookies.')
param liveAllowedOrigins array = ['*']

var queues = loadJsonContent('queues.json').queues
var replyQueue = loadJsonContent('queues.json').replyQueue
var token = uniqueString(resourceGroup().id, baseName)
var prefix = toLower(baseName)
var compact = replace(prefix, '-', '')
var functionAppName = 'func-${prefix}-${token}'
var workerAppName = 'ca-${prefix}-worker'
var deployWorker = !empty(workerImageTag)
var singleSlack = enableSlack && empty(slackApps)
var singleTeams = enableTeams && empty(teamsBots)

resource workerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-worker'
  location: location
  tags: tags
}

resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-func'
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    workspaceName: 'log-${prefix}-${token}'
    appInsightsName: 'appi-${prefix}-${token}'
    retentionInDays: logRetentionInDays
    publisherPrincipalIds: [
      workerIdentity.properties.principalId
      functionIdentity.properties.principalId
    ]
    tags: tags
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    location: location
    namespaceName: 'sb-${prefix}-${token}'
    sku: serviceBusSku
    premiumCapacity: serviceBusPremiumCapacity
    queues: queues
    replyQueue: replyQueue
    workerPrincipalId: workerIdentity.properties.principalId
    functionPrincipalId: functionIdentity.properties.principalId
    functionQueueRole: functionQueueRole
    tags: tags
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    vaultName: 'kv-${take(compact, 8)}-${take(token, 10)}'
    enablePurgeProtection: keyVaultPurgeProtection
    tags: tags
  }
}

module slackAppTokenSecret 'modules/secret.bicep' = if (singleSlack) {
  name: 'secret-slack-app-token'
  params: {
    vaultName: keyVault.outputs.name
    secretName: 'slack-app-token'
    value: slackAppToken
    readerPrincipalIds: [
      workerIdentity.properties.principalId
    ]
  }
}

module slackBotTokenSecret 'modules/secret.bicep' = if (singleSlack) {
  name: 'secret-slack-bot-token'
  params: {
    vaultName: keyVault.outputs.name
    secretName: 'slack-bot-token'
    value: slackBotToken
    readerPrincipalIds: [
      functionIdentity.properties.principalId
    ]
  }
}

module directLineSecretSecret 'modules/secret.bicep' = if (enableDirectLine) {
  name: 'secret-directline-secret'
  params: {
    vaultName: keyVault.outputs.name
    secretName: 'directline-secret'
    value: directLineSecret
    readerPrincipalIds: [
      workerIdentity.properties.principalId
      functionIdentity.properties.principalId
    ]
  }
}

module teamsAppPasswordSecret 'modules/secret.bicep' = if (singleTeams) {
  name: 'secret-teams-app-password'
  params: {
    vaultName: keyVault.outputs.name
    secretName: 'teams-app-password'
    value: teamsAppPassword
    readerPrincipalIds: [
      workerIdentity.properties.principalId
      functionIdentity.properties.principalId
    ]
  }
}

// One secret per app of slackApps / teamsBots, read by the same identities as the single app's.
module slackAppsAppTokenSecrets 'modules/secret.bicep' = [
  for app in slackApps: {
    name: 'secret-slack-app-token-${app.name}'
    params: {
      vaultName: keyVault.outputs.name
      secretName: 'slack-app-token-${replace(app.name, '_', '-')}'
      value: contains(slackAppTokens, app.name) ? slackAppTokens[app.name].appToken : ''
      readerPrincipalIds: [
        workerIdentity.properties.principalId
      ]
    }
  }
]

module slackAppsBotTokenSecrets 'modules/secret.bicep' = [
  for app in slackApps: {
    name: 'secret-slack-bot-token-${app.name}'
    params: {
      vaultName: keyVault.outputs.name
      secretName: 'slack-bot-token-${replace(app.name, '_', '-')}'
      value: contains(slackAppTokens, app.name) ? slackAppTokens[app.name].botToken : ''
      readerPrincipalIds: [
        functionIdentity.properties.principalId
      ]
    }
  }
]

module teamsBotsPasswordSecrets 'modules/secret.bicep' = [
  for bot in teamsBots: {
    name: 'secret-teams-app-password-${bot.name}'
    params: {
      vaultName: keyVault.outputs.name
      secretName: 'teams-app-password-${replace(bot.name, '_', '-')}'
      value: contains(teamsBotPasswords, bot.name) ? teamsBotPasswords[bot.name] : ''
      readerPrincipalIds: [
        workerIdentity.properties.principalId
        functionIdentity.properties.principalId
      ]
    }
  }
]

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    location: location
    registryName: 'cr${take(compact, 8)}${token}'
    sku: registrySku
    pullerPrincipalId: workerIdentity.properties.principalId
    tags: tags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    functionAppName: functionAppName
    planName: 'plan-${prefix}-${token}'
    storageAccountName: 'st${take(compact, 9)}${token}'
    identityId: functionIdentity.id
    identityClientId: functionIdentity.properties.clientId
    identityPrincipalId: functionIdentity.properties.principalId
    serviceBusFqdn: serviceBus.outputs.fullyQualifiedNamespace
    queues: queues
    replyQueueName: serviceBus.outputs.replyQueueName
    appInsightsConnectionString: monitoring.outputs.connectionString
    instanceMemoryMB: functionInstanceMemoryMB
    maximumInstanceCount: functionMaximumInstanceCount
    alwaysReadyInstances: alwaysReadyInstances
    enableSlack: enableSlack
    enableTeams: enableTeams
    slackBotTokenSecretUri: singleSlack ? slackBotTokenSecret!.outputs.uri : ''
    slackApiUrl: slackApiUrl
    teamsAppId: teamsAppId
    teamsTenantId: teamsTenantId
    teamsAppPasswordSecretUri: singleTeams ? teamsAppPasswordSecret!.outputs.uri : ''
    slackApps: slackApps
    teamsBots: teamsBots
    keyVaultUri: keyVault.outputs.uri
    tags: tags
    stateTableName: stateTableName
    enableLive: enableLive
    signalrServiceUri: enableLive ? signalr!.outputs.serviceUri : ''
    liveAudience: liveAudience
    liveTenants: liveTenants
    enableDirectLine: enableDirectLine
    directLineSecretUri: enableDirectLine ? directLineSecretSecret!.outputs.uri : ''
    directLineBaseUrl: directLineBaseUrl
    directLineTableName: directLineTableName
    workerPrincipalId: workerIdentity.properties.principalId
  }
  dependsOn: [
    slackAppsBotTokenSecrets
    teamsBotsPasswordSecrets
  ]
}

module signalr 'modules/signalr.bicep' = if (enableLive) {
  name: 'signalr'
  params: {
    location: location
    signalrName: 'sigr-${prefix}-${token}'
    sku: signalrSku
    capacity: signalrCapacity
    allowedOrigins: liveAllowedOrigins
    functionPrincipalId: functionIdentity.properties.principalId
    tags: tags
  }
}

module worker 'modules/worker.bicep' = if (deployWorker) {
  name: 'worker'
  params: {
    location: location
    environmentName: 'cae-${prefix}-${token}'
    workerAppName: workerAppName
    workspaceId: monitoring.outputs.workspaceId
    identityId: workerIdentity.id
    identityClientId: workerIdentity.properties.clientId
    registryLoginServer: registry.outputs.loginServer
    image: '${registry.outputs.loginServer}/${workerImageRepository}:${workerImageTag}'
    replicas: workerReplicas
    cpu: workerCpu
    memory: workerMemory
    serviceBusFqdn: serviceBus.outputs.fullyQualifiedNamespace
    queues: queues
    replyQueueName: serviceBus.outputs.replyQueueName
    appInsightsConnectionString: monitoring.outputs.connectionString
    logLevel: workerLogLevel
    enableSlack: enableSlack
    slackAppTokenSecretUri: singleSlack ? slackAppTokenSecret!.outputs.uri : ''
    slackConnections: slackConnections
    enableTeams: enableTeams
    teamsAppId: teamsAppId
    teamsTenantId: teamsTenantId
    teamsAppPasswordSecretUri: singleTeams ? teamsAppPasswordSecret!.outputs.uri : ''
    teamsRing: teamsRing
    teamsGeos: teamsGeos
    slackApps: slackApps
    teamsBots: teamsBots
    keyVaultUri: keyVault.outputs.uri
    enableDirectLine: enableDirectLine
    directLineSecretUri: enableDirectLine ? directLineSecretSecret!.outputs.uri : ''
    directLineBaseUrl: directLineBaseUrl
    directLineTableEndpoint: functionApp.outputs.tableEndpoint
    directLineTableName: directLineTableName
    tags: tags
  }
  dependsOn: [
    slackAppsAppTokenSecrets
    teamsBotsPasswordSecrets
  ]
}

@description('Function app to publish the code to (func azure functionapp publish <name>).')
output functionAppName string = functionApp.outputs.name

@description('The live page (functions.live), served by the function app; empty without enableLive.')
output livePageUrl string = enableLive ? 'https://${functionApp.outputs.defaultHostName}/api/live' : ''

@description('SignalR Service endpoint (AzureSignalRConnectionString__serviceUri); empty without enableLive.')
output signalrServiceUri string = enableLive ? signalr!.outputs.serviceUri : ''

@description('Service Bus namespace name.')
output serviceBusNamespace string = serviceBus.outputs.name

@description('Service Bus fully qualified namespace (ServiceBusConnection__fullyQualifiedNamespace).')
output serviceBusFqdn string = serviceBus.outputs.fullyQualifiedNamespace

@description('Worker container app (deployed once workerImageTag is set).')
output workerAppName string = deployWorker ? workerAppName : ''

@description('Key Vault holding the secrets.')
output keyVaultName string = keyVault.outputs.name

@description('Registry to build the worker image in (az acr build -r <name>).')
output registryName string = registry.outputs.name

@description('Registry login server (image prefix).')
output registryLoginServer string = registry.outputs.loginServer
