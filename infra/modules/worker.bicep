// The worker as an Azure Container App: always one replica or more (it holds the platform sockets), no
// ingress, a user-assigned identity that pulls the image (AcrPull) and reads its Key Vault secrets, and
// liveness/readiness probes on the worker's /healthz and /readyz. Logs go to Log Analytics.

@description('Azure region.')
param location string

@description('Container Apps environment name.')
param environmentName string

@description('Container app name.')
param workerAppName string

@description('Log Analytics workspace resource id (receives the environment logs).')
param workspaceId string

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Registry login server, for example myregistry.azurecr.io.')
param registryLoginServer string

@description('Full image reference in that registry.')
param image string

@description('Replicas (each holds its own sockets; duplicates are dropped by MessageId).')
@minValue(1)
@maxValue(3)
param replicas int

@description('vCPU per replica.')
param cpu string

@description('Memory per replica.')
param memory string

@description('Service Bus fully qualified namespace.')
param serviceBusFqdn string

@description('The queues, from queues.json.')
param queues array

@description('Name of the reply queue the worker receives synchronous answers from.')
param replyQueueName string

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('Worker log level.')
param logLevel string

@description('Hold Slack Socket Mode connections.')
param enableSlack bool

@description('Versionless Key Vault URI of the Slack app-level token (xapp-).')
param slackAppTokenSecretUri string

@description('Slack Socket Mode connections per replica.')
param slackConnections int

@description('Hold Teams socket mode connections.')
param enableTeams bool

@description('Bot (Entra app) id.')
param teamsAppId string

@description('Entra tenant id of the single-tenant bot.')
param teamsTenantId string

@description('Versionless Key Vault URI of the bot client secret.')
param teamsAppPasswordSecretUri string

@description('Teams socket mode ring (production, canary, pilot).')
param teamsRing string

@description('Teams geos, comma separated.')
param teamsGeos string

@description('Several Slack apps (RELAYBUS_SLACK_APPS), each {name, connections?}; empty: the single app above.')
param slackApps array

@description('Several Teams bots (RELAYBUS_TEAMS_BOTS), each {name, appId, tenantId}; empty: the single bot above.')
param teamsBots array

@description('Key Vault URI (https://<vault>.vault.azure.net/) holding slack-app-token-<app> and teams-app-password-<bot>.')
param keyVaultUri string

@description('Hold a Direct Line bot\'s conversations (DIRECTLINE_SECRET).')
param enableDirectLine bool

@description('Key Vault secret URI of the Direct Line channel secret (empty without enableDirectLine).')
param directLineSecretUri string

@description('Direct Line endpoint (DIRECTLINE_BASE_URL).')
param directLineBaseUrl string

@description('Table endpoint of the account holding the Direct Line directory (DIRECTLINE_TABLE_ENDPOINT).')
param directLineTableEndpoint string

@description('The Direct Line conversation directory table (DIRECTLINE_TABLE).')
param directLineTableName string

@description('Tags for every resource.')
param tags object

var httpPort = 8080

resource containerEnvironment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
  }
}

resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: containerEnvironment
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

var slackSecrets = enableSlack && empty(slackApps)
  ? [
      {
        name: 'slack-app-token'
        keyVaultUrl: slackAppTokenSecretUri
        identity: identityId
      }
    ]
  : []

var directLineSecrets = enableDirectLine
  ? [
      {
        name: 'directline-secret'
        keyVaultUrl: directLineSecretUri
        identity: identityId
      }
    ]
  : []

// the conversation directory (watermarks, leases) is a table the function app's account holds, reached with
// the identity; its leases let every replica hold some of the conversations (docs/directline.md)
var directLineEnv = enableDirectLine
  ? [
      {
        name: 'DIRECTLINE_SECRET'
        secretRef: 'directline-secret'
      }
      {
        name: 'DIRECTLINE_BASE_URL'
        value: directLineBaseUrl
      }
      {
        name: 'DIRECTLINE_STORE'
        value: 'table'
      }
      {
        name: 'DIRECTLINE_TABLE_ENDPOINT'
        value: directLineTableEndpoint
      }
      {
        name: 'DIRECTLINE_TABLE'
        value: directLineTableName
      }
      {
        name: 'DIRECTLINE_TABLE_CLIENT_ID'
        value: identityClientId
      }
    ]
  : []

var teamsSecrets = enableTeams && empty(teamsBots)
  ? [
      {
        name: 'teams-app-password'
        keyVaultUrl: teamsAppPasswordSecretUri
        identity: identityId
      }
    ]
  : []

// Several apps: one Key Vault reference per app, named like the app's settings suffix (shared/apps.py).
var slackAppSecrets = [
  for app in slackApps: {
    name: 'slack-app-token-${replace(app.name, '_', '-')}'
    keyVaultUrl: '${keyVaultUri}secrets/slack-app-token-${replace(app.name, '_', '-')}'
    identity: identityId
  }
]

var teamsBotSecrets = [
  for bot in teamsBots: {
    name: 'teams-app-password-${replace(bot.name, '_', '-')}'
    keyVaultUrl: '${keyVaultUri}secrets/teams-app-password-${replace(bot.name, '_', '-')}'
    identity: identityId
  }
]

var slackAppNames = [for app in slackApps: app.name]
var teamsBotNames = [for bot in teamsBots: bot.name]

var slackAppsListEnv = empty(slackApps)
  ? []
  : [
      {
        name: 'RELAYBUS_SLACK_APPS'
        value: join(slackAppNames, ',')
      }
    ]

var slackAppTokenEnv = [
  for app in slackApps: {
    name: 'SLACK_APP_TOKEN__${toUpper(replace(app.name, '-', '_'))}'
    secretRef: 'slack-app-token-${replace(app.name, '_', '-')}'
  }
]

var slackAppConnectionsEnv = [
  for app in slackApps: {
    name: 'SLACK_CONNECTIONS__${toUpper(replace(app.name, '-', '_'))}'
    value: string(contains(app, 'connections') ? app.connections : slackConnections)
  }
]

var teamsBotsListEnv = empty(teamsBots)
  ? []
  : [
      {
        name: 'RELAYBUS_TEAMS_BOTS'
        value: join(teamsBotNames, ',')
      }
    ]

var teamsBotIdEnv = [
  for bot in teamsBots: {
    name: 'TEAMS_APP_ID__${toUpper(replace(bot.name, '-', '_'))}'
    value: bot.appId
  }
]

var teamsBotTenantEnv = [
  for bot in teamsBots: {
    name: 'TEAMS_TENANT_ID__${toUpper(replace(bot.name, '-', '_'))}'
    value: bot.tenantId
  }
]

var teamsBotPasswordEnv = [
  for bot in teamsBots: {
    name: 'TEAMS_APP_PASSWORD__${toUpper(replace(bot.name, '-', '_'))}'
    secretRef: 'teams-app-password-${replace(bot.name, '_', '-')}'
  }
]

var appsEnv = concat(
  slackAppsListEnv,
  slackAppTokenEnv,
  slackAppConnectionsEnv,
  teamsBotsListEnv,
  teamsBotIdEnv,
  teamsBotTenantEnv,
  teamsBotPasswordEnv
)

var baseEnv = [
  {
    name: 'RELAYBUS_QUEUE_BACKEND'
    value: 'servicebus'
  }
  {
    name: 'RELAYBUS_HTTP_HOST'
    value: '0.0.0.0'
  }
  {
    name: 'RELAYBUS_HTTP_PORT'
    value: string(httpPort)
  }
  {
    name: 'RELAYBUS_LOG_LEVEL'
    value: logLevel
  }
  {
    name: 'ServiceBusConnection__fullyQualifiedNamespace'
    value: serviceBusFqdn
  }
  {
    name: 'ServiceBusConnection__clientId'
    value: identityClientId
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsightsConnectionString
  }
]

var queueEnv = [
  for queue in queues: {
    name: queue.appSetting
    value: queue.name
  }
]

var replyEnv = [
  {
    name: 'RELAYBUS_REPLY_QUEUE'
    value: replyQueueName
  }
]

var slackEnv = enableSlack && empty(slackApps)
  ? [
      {
        name: 'SLACK_APP_TOKEN'
        secretRef: 'slack-app-token'
      }
    ]
  : []

// the default of every app (SLACK_CONNECTIONS__<APP> overrides it)
var slackCommonEnv = enableSlack
  ? [
      {
        name: 'SLACK_CONNECTIONS'
        value: string(slackConnections)
      }
      {
        // every replica holds every app: the ghost-connection check expects replicas × SLACK_CONNECTIONS
        name: 'SLACK_REPLICAS'
        value: string(replicas)
      }
    ]
  : []

var teamsEnv = enableTeams && empty(teamsBots)
  ? [
      {
        name: 'TEAMS_APP_ID'
        value: teamsAppId
      }
      {
        name: 'TEAMS_TENANT_ID'
        value: teamsTenantId
      }
      {
        name: 'TEAMS_APP_PASSWORD'
        secretRef: 'teams-app-password'
      }
    ]
  : []

// every bot's ring and geos (TEAMS_RING__<BOT>, TEAMS_GEOS__<BOT> would override them)
var teamsCommonEnv = enableTeams
  ? [
      {
        name: 'TEAMS_RING'
        value: teamsRing
      }
      {
        name: 'TEAMS_GEOS'
        value: teamsGeos
      }
    ]
  : []

resource workerApp 'Microsoft.App/containerApps@2024-03-01' = {
  name: workerAppName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    managedEnvironmentId: containerEnvironment.id
    configuration: {
      activeRevisionsMode: 'Single'
      registries: [
        {
          server: registryLoginServer
          identity: identityId
        }
      ]
      secrets: concat(slackSecrets, teamsSecrets, slackAppSecrets, teamsBotSecrets, directLineSecrets)
    }
    template: {
      containers: [
        {
          name: 'worker'
          image: image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: concat(
            baseEnv,
            queueEnv,
            replyEnv,
            slackEnv,
            slackCommonEnv,
            teamsEnv,
            teamsCommonEnv,
            appsEnv,
            directLineEnv
          )
          probes: [
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: httpPort
              }
              initialDelaySeconds: 5
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 3
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: httpPort
              }
              initialDelaySeconds: 5
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 6
            }
          ]
        }
      ]
      scale: {
        minReplicas: replicas
        maxReplicas: replicas
      }
    }
  }
}

output name string = workerApp.name
