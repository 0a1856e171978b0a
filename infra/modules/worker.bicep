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

var slackSecrets = enableSlack
  ? [
      {
        name: 'slack-app-token'
        keyVaultUrl: slackAppTokenSecretUri
        identity: identityId
      }
    ]
  : []

var teamsSecrets = enableTeams
  ? [
      {
        name: 'teams-app-password'
        keyVaultUrl: teamsAppPasswordSecretUri
        identity: identityId
      }
    ]
  : []

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

var slackEnv = enableSlack
  ? [
      {
        name: 'SLACK_APP_TOKEN'
        secretRef: 'slack-app-token'
      }
      {
        name: 'SLACK_CONNECTIONS'
        value: string(slackConnections)
      }
    ]
  : []

var teamsEnv = enableTeams
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
      secrets: concat(slackSecrets, teamsSecrets)
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
          env: concat(baseEnv, queueEnv, replyEnv, slackEnv, teamsEnv)
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
